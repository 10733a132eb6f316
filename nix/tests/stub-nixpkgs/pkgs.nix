# Stand-in for the nixpkgs package set: the builders and packages msgscript's nix files use,
# with nixpkgs' names and arguments. Every package is a real (instantiable) derivation whose
# builder only fails, so evaluation, `nix-instantiate` and `nix flake check --no-build` work
# offline while nothing can be built. The builders check their arguments more strictly than
# nixpkgs does (where an unknown attribute silently becomes an environment variable).
{
  system,
  lib,
  overlays ? [ ],
}:

let
  inherit (builtins)
    all
    attrNames
    filter
    functionArgs
    head
    intersectAttrs
    isAttrs
    isBool
    isFunction
    isList
    isPath
    isString
    map
    removeAttrs
    ;

  fail = what: throw "stand-in nixpkgs: ${what}";

  # A derivation that instantiates and cannot be built; `attrs` become its environment (and so
  # its attributes, as with mkDerivation), `passthru` only attributes.
  stub =
    {
      name,
      passthru ? { },
      meta ? { },
      ...
    }@attrs:
    derivation (
      removeAttrs attrs [
        "passthru"
        "meta"
      ]
      // {
        inherit name system;
        builder = "/bin/sh";
        args = [
          "-c"
          "echo 'stand-in nixpkgs: ${name} cannot be built' >&2; exit 1"
        ];
      }
    )
    // passthru
    // {
      inherit meta;
    };

  checkKeys =
    what: allowed: attrs:
    let
      unknown = filter (k: !(builtins.elem k allowed)) (attrNames attrs);
    in
    if unknown == [ ] then attrs else fail "${what} does not take the argument `${head unknown}'";

  isStringLike = x: isString x || isPath x || (isAttrs x && x ? outPath);

  checkNames =
    what: value:
    if isBool value || (isList value && all isString value) then
      value
    else
      fail "${what} must be a boolean or a list of distribution names";

  metaKeys = [
    "broken"
    "changelog"
    "description"
    "homepage"
    "license"
    "longDescription"
    "mainProgram"
    "maintainers"
    "platforms"
  ];

  pythonBuilderKeys = [
    "build-system"
    "buildInputs"
    "catchConflicts"
    "checkInputs"
    "dependencies"
    "disabled"
    "disabledTestPaths"
    "disabledTests"
    "doCheck"
    "dontWrapPythonPrograms"
    "env"
    "format"
    "makeWrapperArgs"
    "meta"
    "name"
    "nativeBuildInputs"
    "nativeCheckInputs"
    "optional-dependencies"
    "outputs"
    "passthru"
    "patches"
    "permitUserSite"
    "pname"
    "postBuild"
    "postFixup"
    "postInstall"
    "postPatch"
    "preBuild"
    "preInstall"
    "propagatedBuildInputs"
    "pyproject"
    "pytestFlags"
    "pythonImportsCheck"
    "pythonRelaxDeps"
    "pythonRemoveDeps"
    "removeBinBytecode"
    "sourceRoot"
    "src"
    "strictDeps"
    "version"
  ];

  # Packages of the python3Packages set. Their names were checked against nixpkgs'
  # pkgs/top-level/python-packages.nix and pkgs/development/python-modules/. Python nkeys is
  # left out on purpose: not every nixpkgs release has it, and msgscript.nix builds it then.
  pythonPackageNames = [
    "aetcd"
    "aiohttp"
    "brotli"
    "chevron"
    "click"
    "cronsim"
    "google-re2"
    "grpcio"
    "lupa"
    "markdown-it-py"
    "multidict"
    "nats-py"
    "opentelemetry-api"
    "opentelemetry-exporter-otlp-proto-grpc"
    "opentelemetry-sdk"
    "prometheus-client"
    "psycopg"
    "pymysql"
    "pynacl"
    "pyyaml"
    "setuptools"
    "uvloop"
    "wasmtime"
    "watchfiles"
    "yarl"
  ];

  callPackageWith =
    scope: fn: args:
    let
      f = if isFunction fn then fn else import fn;
    in
    f (intersectAttrs (functionArgs f) scope // args);

  base =
    final:
    let
      python = stub {
        name = "python3-3.12.8";
        pname = "python3";
        version = "3.12.8";
        passthru = {
          pythonVersion = "3.12";
          pkgs = final.python3Packages;
        };
      };

      pythonModule =
        pname:
        stub {
          name = "python3.12-${pname}-stand-in";
          inherit pname;
          version = "stand-in";
          passthru.pythonModule = python;
        };

      mkPythonDerivation =
        namePrefix: attrs:
        let
          a = checkKeys "buildPythonPackage" pythonBuilderKeys attrs;
          pythonInputs =
            what: xs:
            if !(isList xs) then
              fail "${what} must be a list"
            else
              map (
                x:
                if lib.isDerivation x && (x.pythonModule or null) == python then
                  x
                else
                  fail "${what} of ${a.pname}: ${x.name or "a value"} is not a package of this Python's package set"
              ) xs;
          buildSystem = pythonInputs "build-system" (a.build-system or [ ]);
          dependencies = pythonInputs "dependencies" (a.dependencies or [ ]);
          format =
            if (a.pyproject or null) != null && (a.format or null) != null then
              fail "${a.pname}: give `pyproject' or `format', not both"
            else if (a.pyproject or null) != null then
              (if a.pyproject then "pyproject" else "other")
            else
              a.format or "setuptools";
          wrapperArgs =
            if isList (a.makeWrapperArgs or [ ]) && all isString (a.makeWrapperArgs or [ ]) then
              a.makeWrapperArgs or [ ]
            else
              fail "makeWrapperArgs of ${a.pname} must be a list of strings";
        in
        if !(isString (a.pname or null) && isString (a.version or null)) then
          fail "buildPythonPackage needs `pname' and `version' strings"
        else if !(isStringLike (a.src or null)) then
          fail "buildPythonPackage: the `src' of ${a.pname} is not a path or a derivation"
        else
          stub (
            removeAttrs a [
              "build-system"
              "dependencies"
              "optional-dependencies"
              "pyproject"
              "format"
              "doCheck"
              "disabled"
              "nativeCheckInputs"
              "checkInputs"
            ]
            // {
              name = "${namePrefix}${a.pname}-${a.version}";
              inherit format;
              makeWrapperArgs = wrapperArgs;
              nativeBuildInputs = (a.nativeBuildInputs or [ ]) ++ buildSystem;
              propagatedBuildInputs = (a.propagatedBuildInputs or [ ]) ++ dependencies ++ [ python ];
              doInstallCheck = a.doCheck or true;
              meta = checkKeys "meta" metaKeys (a.meta or { });
              passthru =
                (a.passthru or { })
                // {
                  inherit dependencies;
                  build-system = buildSystem;
                  optional-dependencies = a.optional-dependencies or { };
                };
            }
            // lib.optionalAttrs (a ? pythonRelaxDeps) {
              pythonRelaxDeps = checkNames "pythonRelaxDeps" a.pythonRelaxDeps;
            }
            // lib.optionalAttrs (a ? pythonRemoveDeps) {
              pythonRemoveDeps = checkNames "pythonRemoveDeps" a.pythonRemoveDeps;
            }
          );

      buildPythonPackage =
        attrs: (mkPythonDerivation "python3.12-" attrs) // { pythonModule = python; };

      fetchPypi =
        {
          pname,
          version,
          hash,
          format ? "setuptools",
          extension ? "tar.gz",
        }:
        if builtins.match "sha256-[A-Za-z0-9+/]{43}=" hash == null then
          fail "fetchPypi ${pname}: `hash' must be an SRI sha256 hash"
        else
          derivation {
            name = "${pname}-${version}.${extension}";
            inherit system;
            builder = "/bin/sh";
            args = [
              "-c"
              "echo 'stand-in nixpkgs: no downloads' >&2; exit 1"
            ];
            url = "https://files.pythonhosted.org/packages/source/${builtins.substring 0 1 pname}/${pname}/${pname}-${version}.${extension}";
            outputHashMode = "flat";
            outputHashAlgo = "sha256";
            outputHash = hash;
          };

      pythonPackages =
        lib.genAttrs pythonPackageNames pythonModule
        // {
          inherit python buildPythonPackage fetchPypi;
          buildPythonApplication = mkPythonDerivation "";
          callPackage = callPackageWith (final // pythonPackages);
        };
    in
    {
      inherit lib system;
      stdenv = {
        inherit system;
        hostPlatform = {
          inherit system;
        };
      };

      callPackage = callPackageWith final;

      python3 = python;
      python3Packages = pythonPackages;

      nats-server = stub {
        name = "nats-server-2.10.22";
        pname = "nats-server";
        version = "2.10.22";
        meta.mainProgram = "nats-server";
      };

      symlinkJoin =
        {
          name,
          paths,
          postBuild ? "",
          ...
        }@args:
        if !(isList paths && all isStringLike paths) then
          fail "symlinkJoin ${name}: `paths' must be a list of paths or packages"
        else
          stub (
            checkKeys "symlinkJoin" [ "name" "paths" "postBuild" "passthru" "meta" ] args
            // {
              inherit postBuild;
              paths = map toString paths;
            }
          );

      linkFarm =
        name: entries:
        let
          list =
            if isList entries then
              entries
            else
              map (n: {
                name = n;
                path = entries.${n};
              }) (attrNames entries);
          valid = e: isString (e.name or null) && !(lib.hasPrefix "/" e.name) && isStringLike (e.path or null);
        in
        if !(all valid list) then
          fail "linkFarm ${name}: entries must be { name = relative path; path = path or package; }"
        else
          stub {
            inherit name;
            linkNames = map (e: e.name) list;
            linkTargets = map (e: toString e.path) list;
          };
    };

  applyOverlays = final: builtins.foldl' (prev: overlay: prev // overlay final prev) (base final) overlays;
  pkgs = applyOverlays pkgs;
in
pkgs
