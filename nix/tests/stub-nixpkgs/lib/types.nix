# Option types of the stand-in lib: nixpkgs' names, checks and merge rules for the types the
# msgscript module and the NixOS stand-in use. `check` decides what a definition may be; `merge`
# combines the definitions that passed it (lists concatenate, attribute sets merge by name,
# submodules evaluate, everything else must agree).
lib:

let
  inherit (builtins)
    all
    attrNames
    concatMap
    concatStringsSep
    filter
    head
    isAttrs
    isBool
    isFunction
    isInt
    isList
    isPath
    isString
    listToAttrs
    map
    tail
    toJSON
    ;

  mkOptionType =
    {
      name,
      description ? name,
      check ? (_: true),
      merge ? lib.mergeEqualOption,
      ...
    }@attrs:
    attrs
    // {
      _type = "option-type";
      inherit
        name
        description
        check
        merge
        ;
    };

  isStringLike = x: isString x || isPath x || (isAttrs x && x ? outPath);

  intBetween =
    description: lo: hi:
    mkOptionType {
      name = "intBetween";
      inherit description;
      check = x: isInt x && x >= lo && x <= hi;
    };

  either =
    a: b:
    mkOptionType {
      name = "either";
      description = "${a.description} or ${b.description}";
      check = x: a.check x || b.check x;
      merge =
        loc: defs:
        if all (d: a.check d.value) defs then
          a.merge loc defs
        else if all (d: b.check d.value) defs then
          b.merge loc defs
        else
          lib.mergeOneOption loc defs;
      nestedTypes = {
        left = a;
        right = b;
      };
    };

  types = {
    inherit mkOptionType either;

    unspecified = mkOptionType {
      name = "unspecified";
      description = "unspecified value";
      merge =
        loc: defs:
        if all (d: isList d.value) defs then concatMap (d: d.value) defs else lib.mergeEqualOption loc defs;
    };

    bool = mkOptionType {
      name = "bool";
      description = "boolean";
      check = isBool;
    };

    str = mkOptionType {
      name = "str";
      description = "string";
      check = isString;
    };

    lines = mkOptionType {
      name = "lines";
      description = "strings concatenated with \"\\n\"";
      check = isString;
      merge = loc: defs: concatStringsSep "\n" (map (d: d.value) defs);
    };

    int = mkOptionType {
      name = "int";
      description = "signed integer";
      check = isInt;
    };

    ints = {
      between = lo: hi: intBetween "integer between ${toString lo} and ${toString hi} (both inclusive)" lo hi;
      positive = mkOptionType {
        name = "positiveInt";
        description = "positive integer, meaning >0";
        check = x: isInt x && x > 0;
      };
      unsigned = mkOptionType {
        name = "unsignedInt";
        description = "unsigned integer, meaning >=0";
        check = x: isInt x && x >= 0;
      };
      u16 = intBetween "16 bit unsigned integer; between 0 and 65535 (both inclusive)" 0 65535;
    };

    port = types.ints.u16;

    path = mkOptionType {
      name = "path";
      description = "path";
      check = x: isStringLike x && lib.hasPrefix "/" (toString x);
    };

    package = mkOptionType {
      name = "package";
      description = "package";
      check = x: lib.isDerivation x || lib.isStorePath x;
      merge = lib.mergeOneOption;
    };

    enum =
      values:
      mkOptionType {
        name = "enum";
        description = "one of ${concatStringsSep ", " (map toJSON values)}";
        check = x: builtins.elem x values;
        functor.payload = values;
      };

    strMatching =
      pattern:
      mkOptionType {
        name = "strMatching ${toJSON pattern}";
        description = "string matching the pattern ${pattern}";
        check = x: isString x && builtins.match pattern x != null;
      };

    nullOr =
      elemType:
      mkOptionType {
        name = "nullOr";
        description = "null or ${elemType.description}";
        check = x: x == null || elemType.check x;
        merge =
          loc: defs:
          let
            nulls = filter (d: d.value == null) defs;
          in
          if nulls == [ ] then
            elemType.merge loc defs
          else if builtins.length nulls == builtins.length defs then
            null
          else
            throw "The option `${lib.showOption loc}' is defined both null and not null.";
        nestedTypes.elemType = elemType;
      };

    oneOf =
      ts:
      if ts == [ ] then throw "types.oneOf needs at least one type" else builtins.foldl' either (head ts) (tail ts);

    listOf =
      elemType:
      mkOptionType {
        name = "listOf";
        description = "list of ${elemType.description}";
        check = isList;
        merge =
          loc: defs:
          concatMap (
            d:
            map (
              x:
              if elemType.check x then
                elemType.merge loc [
                  {
                    inherit (d) file;
                    value = x;
                  }
                ]
              else
                throw "A definition for option `${lib.showOption loc}' is not of type `list of ${elemType.description}'. Definition values:\n- In `${d.file}': an element does not match: ${toJSON (if isString x || isInt x || isBool x || x == null then x else builtins.typeOf x)}"
            ) d.value
          ) defs;
        nestedTypes.elemType = elemType;
      };

    attrsOf =
      elemType:
      mkOptionType {
        name = "attrsOf";
        description = "attribute set of ${elemType.description}";
        check = isAttrs;
        merge =
          loc: defs:
          let
            names = lib.unique (concatMap (d: attrNames d.value) defs);
            merged =
              name:
              lib.mergeDefinitions (loc ++ [ name ]) elemType (
                concatMap (
                  d:
                  lib.optional (d.value ? ${name}) {
                    inherit (d) file;
                    value = d.value.${name};
                  }
                ) defs
              );
          in
          listToAttrs (
            concatMap (
              name:
              let
                m = merged name;
              in
              lib.optional m.isDefined {
                inherit name;
                inherit (m) value;
              }
            ) names
          );
        nestedTypes.elemType = elemType;
      };

    submodule =
      module:
      mkOptionType {
        name = "submodule";
        description = "submodule";
        check = x: isAttrs x || isFunction x || isPath x;
        merge =
          loc: defs:
          (lib.evalModules {
            prefix = loc;
            specialArgs.name = lib.last loc;
            modules = [
              module
            ]
            ++ map (
              d:
              if isFunction d.value || isPath d.value then
                d.value
              else
                {
                  _file = d.file;
                  config = d.value;
                }
            ) defs;
          }).config;
      };

    addCheck = t: extra: t // { check = x: t.check x && extra x; };
  };
in
types
