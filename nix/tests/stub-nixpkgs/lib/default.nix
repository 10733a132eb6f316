# Stand-in for nixpkgs' `lib`, for checks that cannot download nixpkgs: the functions msgscript's
# nix files use, under the same names and with the same meaning, and a module system (modules.nix)
# that declares, defaults, merges and type-checks options (types.nix).
let
  inherit (builtins)
    attrNames
    concatStringsSep
    filter
    foldl'
    isAttrs
    isString
    listToAttrs
    map
    split
    stringLength
    substring
    ;

  lib = {
    inherit (builtins)
      all
      any
      attrNames
      attrValues
      concatLists
      concatMap
      concatStringsSep
      elem
      elemAt
      filter
      foldl'
      functionArgs
      hasAttr
      head
      intersectAttrs
      isAttrs
      isBool
      isFunction
      isInt
      isList
      isPath
      isString
      length
      listToAttrs
      mapAttrs
      removeAttrs
      replaceStrings
      tail
      toJSON
      ;

    optional = cond: x: if cond then [ x ] else [ ];
    optionals = cond: xs: if cond then xs else [ ];
    optionalAttrs = cond: attrs: if cond then attrs else { };
    optionalString = cond: s: if cond then s else "";

    concatMapStringsSep =
      sep: f: xs:
      concatStringsSep sep (map f xs);
    unique = foldl' (seen: x: if builtins.elem x seen then seen else seen ++ [ x ]) [ ];
    last = xs: builtins.elemAt xs (builtins.length xs - 1);

    hasPrefix = prefix: s: substring 0 (stringLength prefix) s == prefix;
    hasSuffix =
      suffix: s:
      let
        n = stringLength s;
        m = stringLength suffix;
      in
      n >= m && substring (n - m) m s == suffix;
    hasInfix = infix: s: builtins.match ".*${lib.escapeRegex infix}.*" s != null;
    removePrefix =
      prefix: s: if lib.hasPrefix prefix s then substring (stringLength prefix) (stringLength s) s else s;
    removeSuffix =
      suffix: s:
      if lib.hasSuffix suffix s then substring 0 (stringLength s - stringLength suffix) s else s;
    escapeRegex =
      let
        special = lib.stringToCharacters "\\[{()^$?*+|.";
      in
      builtins.replaceStrings special (map (c: "\\${c}") special);
    stringToCharacters = s: builtins.genList (i: substring i 1 s) (stringLength s);
    splitString = sep: s: filter isString (split (lib.escapeRegex sep) s);

    makeSearchPath =
      subDir: paths: concatStringsSep ":" (map (p: "${p}/${subDir}") (filter (p: p != null) paths));
    makeBinPath = lib.makeSearchPath "bin";

    nameValuePair = name: value: { inherit name value; };
    genAttrs = names: f: listToAttrs (map (n: lib.nameValuePair n (f n)) names);
    filterAttrs =
      pred: attrs: listToAttrs (map (n: lib.nameValuePair n attrs.${n}) (filter (n: pred n attrs.${n}) (attrNames attrs)));
    mapAttrsToList = f: attrs: map (n: f n attrs.${n}) (attrNames attrs);

    isDerivation = x: isAttrs x && x.type or null == "derivation";
    isStorePath = x: isString x && lib.hasPrefix builtins.storeDir x;

    literalExpression = text: {
      _type = "literalExpression";
      inherit text;
    };

    licenses = {
      mit = {
        spdxId = "MIT";
        shortName = "mit";
      };
      asl20 = {
        spdxId = "Apache-2.0";
        shortName = "asl20";
      };
    };
    platforms.linux = [
      "x86_64-linux"
      "aarch64-linux"
      "i686-linux"
      "armv7l-linux"
    ];

    types = import ./types.nix lib;
  }
  // import ./modules.nix lib;
in
lib
