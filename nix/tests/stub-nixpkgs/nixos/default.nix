# Stand-in for the part of NixOS a service module writes to: systemd services and tmpfiles,
# users and groups, the firewall's TCP ports, assertions. Option names and types follow NixOS
# (nixos/lib/systemd-unit-options.nix, nixos/modules/config/users-groups.nix,
# nixos/modules/services/networking/firewall.nix), reduced to what such modules set.
#
# evalConfig { modules } evaluates them like nixpkgs' nixos/lib/eval-config.nix does and fails,
# as building a NixOS system would, when an assertion does not hold.
{ lib, pkgs }:

let
  inherit (lib) mkOption types;

  listOfStr = mkOption {
    type = types.listOf types.str;
    default = [ ];
  };

  # A value in a [Service] or [Unit] section: lists become one line per element.
  unitOption =
    let
      scalar = x: builtins.isBool x || builtins.isInt x || builtins.isString x || builtins.isPath x || lib.isDerivation x;
    in
    types.mkOptionType {
      name = "systemd option";
      description = "systemd unit setting (boolean, integer, string, path, package or a list of them)";
      check = x: scalar x || (builtins.isList x && builtins.all scalar x);
      merge =
        loc: defs:
        if builtins.all (d: builtins.isList d.value) defs then
          builtins.concatMap (d: d.value) defs
        else
          lib.mergeEqualOption loc defs;
    };

  serviceModule = {
    options = {
      enable = mkOption {
        type = types.bool;
        default = true;
      };
      description = mkOption {
        type = types.str;
        default = "";
      };
      wantedBy = listOfStr;
      requiredBy = listOfStr;
      wants = listOfStr;
      requires = listOfStr;
      after = listOfStr;
      before = listOfStr;
      bindsTo = listOfStr;
      partOf = listOfStr;
      conflicts = listOfStr;
      environment = mkOption {
        type = types.attrsOf (
          types.nullOr (
            types.oneOf [
              types.str
              types.path
              types.package
            ]
          )
        );
        default = { };
      };
      path = mkOption {
        type = types.listOf (
          types.oneOf [
            types.package
            types.str
          ]
        );
        default = [ ];
      };
      serviceConfig = mkOption {
        type = types.attrsOf unitOption;
        default = { };
      };
      unitConfig = mkOption {
        type = types.attrsOf unitOption;
        default = { };
      };
      restartIfChanged = mkOption {
        type = types.bool;
        default = true;
      };
      restartTriggers = mkOption {
        type = types.listOf types.unspecified;
        default = [ ];
      };
      script = mkOption {
        type = types.lines;
        default = "";
      };
      preStart = mkOption {
        type = types.lines;
        default = "";
      };
      startLimitBurst = mkOption { type = types.int; };
      startLimitIntervalSec = mkOption { type = types.int; };
    };
  };

  userModule =
    { name, ... }:
    {
      options = {
        name = mkOption {
          type = types.str;
          default = name;
        };
        isSystemUser = mkOption {
          type = types.bool;
          default = false;
        };
        isNormalUser = mkOption {
          type = types.bool;
          default = false;
        };
        group = mkOption {
          type = types.str;
          default = "";
        };
        extraGroups = listOfStr;
        description = mkOption {
          type = types.str;
          default = "";
        };
        home = mkOption {
          type = types.path;
          default = "/var/empty";
        };
        createHome = mkOption {
          type = types.bool;
          default = false;
        };
        uid = mkOption {
          type = types.nullOr types.int;
          default = null;
        };
      };
    };

  groupModule =
    { name, ... }:
    {
      options = {
        name = mkOption {
          type = types.str;
          default = name;
        };
        gid = mkOption {
          type = types.nullOr types.int;
          default = null;
        };
        members = listOfStr;
      };
    };

  base =
    { config, ... }:
    {
      options = {
        assertions = mkOption {
          type = types.listOf types.unspecified;
          default = [ ];
        };
        warnings = listOfStr;
        environment.systemPackages = mkOption {
          type = types.listOf types.package;
          default = [ ];
        };
        systemd.services = mkOption {
          type = types.attrsOf (types.submodule serviceModule);
          default = { };
        };
        systemd.tmpfiles.rules = listOfStr;
        users.users = mkOption {
          type = types.attrsOf (types.submodule userModule);
          default = { };
        };
        users.groups = mkOption {
          type = types.attrsOf (types.submodule groupModule);
          default = { };
        };
        networking.firewall = {
          enable = mkOption {
            type = types.bool;
            default = true;
          };
          allowedTCPPorts = mkOption {
            type = types.listOf types.port;
            default = [ ];
          };
          allowedUDPPorts = mkOption {
            type = types.listOf types.port;
            default = [ ];
          };
        };
      };

      # What NixOS checks of every user (the group must exist when the system is activated).
      config.assertions = lib.concatMap (
        user:
        [
          {
            assertion = user.group != "";
            message = "users.users.${user.name}.group is unset.";
          }
          {
            assertion = user.isSystemUser != user.isNormalUser;
            message = "Exactly one of users.users.${user.name}.isSystemUser and users.users.${user.name}.isNormalUser must be set.";
          }
          {
            assertion = user.group == "" || config.users.groups ? ${user.group} || builtins.elem user.group [ "nogroup" "users" "wheel" ];
            message = "users.users.${user.name}.group is `${user.group}', a group that is not defined.";
          }
        ]
      ) (builtins.attrValues config.users.users);
    };
in
{
  evalConfig =
    { modules }:
    let
      evaluated = lib.evalModules {
        modules = [ base ] ++ modules;
        specialArgs = {
          inherit pkgs;
        };
      };
      failed = map (a: a.message) (builtins.filter (a: !a.assertion) evaluated.config.assertions);
    in
    evaluated
    // {
      # What building the system would check first.
      checked =
        if failed == [ ] then evaluated.config else throw "Failed assertions:\n- ${builtins.concatStringsSep "\n- " failed}";
    };
}
