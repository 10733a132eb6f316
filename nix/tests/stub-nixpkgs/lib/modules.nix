# The module system of the stand-in lib: what NixOS modules rely on, with nixpkgs' semantics.
#
# - Modules are attribute sets, functions of { config, options, lib, pkgs, ... }, or paths to
#   either; `imports` is followed; `options` declares, `config` (or a module without
#   `options`/`config`) defines.
# - Definitions may be wrapped in mkIf, mkMerge and mkOverride (mkDefault, mkForce) at any depth.
#   Wrappers above an option are pushed down to the attributes below them, so the names a module
#   defines are known without evaluating any condition (as in nixpkgs, this is what lets a module
#   write `config = mkIf cfg.enable { ... }`).
# - A definition of an undeclared option is an error; so is a value that fails its type's check,
#   conflicting values of a type that cannot merge them, and reading an option without a value.
# - Among the definitions of an option only those with the best (lowest) priority count; an
#   option's default has priority 1500, plain definitions 100, mkDefault 1000, mkForce 50.
lib:

let
  inherit (builtins)
    attrNames
    concatMap
    concatStringsSep
    filter
    foldl'
    head
    isAttrs
    isBool
    isFunction
    isList
    isPath
    isString
    length
    map
    mapAttrs
    removeAttrs
    tail
    typeOf
    ;

  defaultPriority = 100;
  optionDefaultPriority = 1500;

  propertyOf = value: if isAttrs value then value._type or null else null;

  showOption = loc: concatStringsSep "." loc;

  showValue =
    value:
    if isString value || builtins.isInt value || isBool value || value == null then
      builtins.toJSON value
    else if lib.isDerivation value then
      "<derivation ${value.name}>"
    else if isList value then
      "[ ${concatStringsSep " " (map showValue value)} ]"
    else if isAttrs value then
      "{ ${concatStringsSep " " (map (n: "${n} = ${showValue value.${n}};") (attrNames value))} }"
    else
      "<${typeOf value}>";

  showDefs = defs: concatStringsSep "" (map (d: "\n- In `${d.file}': ${showValue d.value}") defs);

  mkOptionKeys = [
    "apply"
    "default"
    "defaultText"
    "description"
    "example"
    "internal"
    "readOnly"
    "relatedPackages"
    "type"
    "visible"
  ];

  mkOption =
    attrs:
    let
      unknown = filter (k: !(builtins.elem k mkOptionKeys)) (attrNames attrs);
    in
    if unknown != [ ] then
      throw "mkOption: unknown argument `${head unknown}'"
    else
      {
        _type = "option";
        type = attrs.type or lib.types.unspecified;
      }
      // removeAttrs attrs [ "type" ];

  isOption = x: propertyOf x == "option";

  # The attribute sets a definition made at a level above the options, with its wrappers moved
  # onto each attribute.
  pushDown =
    loc: def:
    let
      value = def.value;
      kind = propertyOf value;
      wrapEach = wrap: map (d: d // { value = mapAttrs (_: wrap) d.value; });
    in
    if kind == "merge" then
      concatMap (v: pushDown loc (def // { value = v; })) value.contents
    else if kind == "if" then
      wrapEach (v: lib.mkIf value.condition v) (pushDown loc (def // { value = value.content; }))
    else if kind == "override" then
      wrapEach (v: lib.mkOverride value.priority v) (pushDown loc (def // { value = value.content; }))
    else if isAttrs value then
      [ def ]
    else
      throw "The option `${showOption loc}' is a set of options, not a value; definition in `${def.file}': ${showValue value}";

  # The plain values of a definition of one option, with their priorities: mkMerge is flattened,
  # mkIf decided, mkOverride recorded.
  discharge =
    def:
    let
      value = def.value;
      kind = propertyOf value;
    in
    if kind == "merge" then
      concatMap (v: discharge (def // { value = v; })) value.contents
    else if kind == "if" then
      if !isBool value.condition then
        throw "mkIf called with a non-Boolean condition (in `${def.file}')"
      else if value.condition then
        discharge (def // { value = value.content; })
      else
        [ ]
    else if kind == "override" then
      discharge (
        def
        // {
          value = value.content;
          priority = def.priority or value.priority;
        }
      )
    else
      [
        {
          inherit (def) file;
          inherit value;
          priority = def.priority or defaultPriority;
        }
      ];

  # { isDefined, value } of an option (or of an element of an attrsOf) from its definitions.
  mergeDefinitions =
    loc: type: defs:
    let
      values = concatMap discharge defs;
      best = foldl' (p: d: if d.priority < p then d.priority else p) optionDefaultPriority values;
      chosen = filter (d: d.priority == best) values;
      checked = map (
        d:
        if type.check d.value then
          d
        else
          throw "A definition for option `${showOption loc}' is not of type `${type.description}'. Definition values:${showDefs [ d ]}"
      ) chosen;
    in
    {
      isDefined = chosen != [ ];
      value =
        if chosen == [ ] then
          throw "The option `${showOption loc}' is used but not defined."
        else
          type.merge loc checked;
    };

  evalOption =
    loc: opt: defs:
    let
      defaults = lib.optional (opt ? default) {
        file = "the default of ${showOption loc}";
        value = opt.default;
        priority = optionDefaultPriority;
      };
      merged = (mergeDefinitions loc opt.type (defs ++ defaults)).value;
    in
    if opt ? apply then opt.apply merged else merged;

  evalNode =
    loc: node: defs:
    if isOption node then
      evalOption loc node defs
    else
      let
        sets = concatMap (pushDown loc) defs;
        undeclared = concatMap (
          d:
          map (name: {
            inherit name;
            inherit (d) file;
          }) (filter (name: !(node ? ${name})) (attrNames d.value))
        ) sets;
        below =
          name:
          concatMap (
            d:
            lib.optional (d.value ? ${name}) {
              inherit (d) file;
              value = d.value.${name};
            }
          ) sets;
        result = mapAttrs (name: sub: evalNode (loc ++ [ name ]) sub (below name)) node;
      in
      if undeclared == [ ] then
        result
      else
        throw "The option `${showOption (loc ++ [ (head undeclared).name ])}' does not exist. Definition values:\n- In `${(head undeclared).file}'";

  mergeDeclarations =
    loc: a: b:
    a
    // mapAttrs (
      name: decl:
      if !(a ? ${name}) then
        decl
      else if isOption decl || isOption a.${name} then
        throw "The option `${showOption (loc ++ [ name ])}' is declared more than once."
      else
        mergeDeclarations (loc ++ [ name ]) a.${name} decl
    ) b;

  moduleKeys = [
    "_file"
    "config"
    "imports"
    "key"
    "meta"
    "options"
  ];

  evalModules =
    {
      modules,
      specialArgs ? { },
      prefix ? [ ],
    }:
    let
      args = specialArgs // {
        inherit lib config options;
      };

      load =
        file: module:
        let
          file' = if isPath module || isString module then toString module else file;
          raw = if isPath module || isString module then import module else module;
          applied = if isFunction raw then raw args else raw;
          structured = applied ? options || applied ? config;
          unknown = filter (k: !(builtins.elem k moduleKeys)) (attrNames applied);
          source = applied._file or file';
        in
        if !isAttrs applied then
          throw "module in `${file'}' is not an attribute set or a function returning one"
        else if structured && unknown != [ ] then
          throw "module in `${source}' has an unsupported attribute `${head unknown}'"
        else
          [
            {
              file = source;
              options = applied.options or { };
              config =
                if structured then
                  applied.config or { }
                else
                  removeAttrs applied [
                    "_file"
                    "imports"
                    "key"
                    "meta"
                  ];
            }
          ]
          ++ concatMap (load source) (applied.imports or [ ]);

      collected = concatMap (load "<module>") modules;
      options = foldl' (mergeDeclarations prefix) { } (map (m: m.options) collected);
      config = evalNode prefix options (
        map (m: {
          inherit (m) file;
          value = m.config;
        }) collected
      );
    in
    {
      inherit config options;
    };

  mergeEqualOption =
    loc: defs:
    let
      first = head defs;
    in
    foldl' (
      value: d:
      if d.value == value then
        value
      else
        throw "The option `${showOption loc}' has conflicting definition values:${showDefs [ first d ]}"
    ) first.value (tail defs);

  mergeOneOption =
    loc: defs:
    if length defs == 1 then
      (head defs).value
    else
      throw "The unique option `${showOption loc}' is defined multiple times. Definition values:${showDefs defs}";
in
{
  inherit
    evalModules
    mergeDefinitions
    mergeEqualOption
    mergeOneOption
    mkOption
    showOption
    ;

  mkEnableOption =
    name:
    mkOption {
      type = lib.types.bool;
      default = false;
      example = true;
      description = "Whether to enable ${name}.";
    };

  mkIf = condition: content: {
    _type = "if";
    inherit condition content;
  };
  mkMerge = contents: {
    _type = "merge";
    inherit contents;
  };
  mkOverride = priority: content: {
    _type = "override";
    inherit priority content;
  };
  mkOptionDefault = lib.mkOverride optionDefaultPriority;
  mkDefault = lib.mkOverride 1000;
  mkForce = lib.mkOverride 50;
}
