# NixOS module: services.msgscript, the msgscript daemon as a hardened system service.
#
# The options of the Go msgscript's module keep their names, types and defaults; ours come after
# them. An option left at null (or an empty string where the Go module used one) adds no flag,
# so the daemon's own default applies.
{
  config,
  lib,
  pkgs,
  ...
}:

let
  inherit (lib)
    concatMap
    concatStringsSep
    hasPrefix
    hasSuffix
    mkEnableOption
    mkIf
    mkMerge
    mkOption
    optional
    optionals
    removePrefix
    removeSuffix
    types
    ;

  cfg = config.services.msgscript;

  # The plugins this checkout bundles, by the name `bundledPlugins` takes: `hello` for hello.py,
  # `db` for the db/ package (the daemon's rule: *.py files and folders with an __init__.py).
  pluginSource = ../../plugins;
  bundled = builtins.listToAttrs (
    concatMap (
      entry:
      let
        kind = (builtins.readDir pluginSource).${entry};
        visible = !(hasPrefix "_" entry || hasPrefix "." entry);
      in
      if visible && kind == "regular" && hasSuffix ".py" entry then
        [
          {
            name = removeSuffix ".py" entry;
            value = entry;
          }
        ]
      else if visible && kind == "directory" && builtins.pathExists (pluginSource + "/${entry}/__init__.py") then
        [
          {
            name = entry;
            value = entry;
          }
        ]
      else
        [ ]
    ) (builtins.attrNames (builtins.readDir pluginSource))
  );

  selectedBundled = pkgs.linkFarm "msgscript-bundled-plugins" (
    map (name: {
      name = bundled.${name};
      path = "${cfg.package}/share/msgscript/plugins/${bundled.${name}}";
    }) cfg.bundledPlugins
  );

  pluginPackages = optional (cfg.bundledPlugins != [ ]) selectedBundled ++ cfg.plugins;

  pluginDir =
    if pluginPackages == [ ] then
      null
    else
      pkgs.symlinkJoin {
        name = "msgscript-plugins";
        paths = pluginPackages;
      };

  # systemd reads Exec lines with its own quoting rules, not a shell's: each argument becomes a
  # JSON string (a subset of systemd's "..." syntax), and % and $ are doubled so that no
  # specifier or variable is expanded.
  execArg = arg: builtins.replaceStrings [ "%" "$" ] [ "%%" "$$" ] (builtins.toJSON arg);

  flag = name: value: optionals (value != null && value != "") [ name (toString value) ];

  args = [
    "${cfg.package}/bin/msgscript"
    "-backend"
    cfg.backend
  ]
  ++ flag "-etcdurl" (concatStringsSep "," cfg.etcdEndpoints)
  ++ flag "-natsurl" cfg.natsUrl
  ++ optionals (pluginDir != null) [
    "-plugin"
    "${pluginDir}"
  ]
  # The script and library directories only mean something to the file backend.
  ++ optionals (cfg.backend == "file") (flag "-script" cfg.scriptDir ++ flag "-library" cfg.libraryDir)
  ++ [
    "-port"
    (toString cfg.port)
  ]
  # An empty queue group is a value (every instance runs every message), not an absent flag.
  ++ optional (cfg.queueGroup == "") "-queue-group="
  ++ flag "-queue-group" cfg.queueGroup
  ++ flag "-timeout" cfg.timeout
  ++ flag "-max-memory" cfg.maxMemory
  ++ flag "-max-in-flight" cfg.maxInFlight
  ++ flag "-workers" cfg.workers
  # Following the script directory is the daemon's default; only turning it off is a flag.
  ++ optional (cfg.backend == "file" && !cfg.watch) "-watch=false"
  ++ optional cfg.production "-production"
  ++ cfg.extraArgs;

  # StateDirectory= only takes directories under /var/lib; elsewhere tmpfiles creates dataDir.
  stateDirectory = if hasPrefix "/var/lib/" cfg.dataDir then removePrefix "/var/lib/" cfg.dataDir else null;

  ownDirectory = dir: "d ${dir} 0750 ${cfg.user} ${cfg.group} - -";
  insideDataDir = dir: dir != "" && hasPrefix "${cfg.dataDir}/" dir;

  privilegedPort = cfg.port > 0 && cfg.port < 1024;

  goDuration = types.strMatching "([0-9]+(\\.[0-9]*)?|\\.[0-9]+)(ns|us|µs|μs|ms|s|m|h)(([0-9]+(\\.[0-9]*)?|\\.[0-9]+)(ns|us|µs|μs|ms|s|m|h))*";
  byteSize = types.strMatching "[0-9]+(\\.[0-9]+)? *([kKmMgGtT]?[iI]?[bB]?)";
in
{
  options.services.msgscript = {
    # The Go msgscript module's options.

    enable = mkEnableOption "the msgscript daemon";

    etcdEndpoints = mkOption {
      type = types.listOf types.str;
      default = [ "http://127.0.0.1:2379" ];
      description = ''
        etcd endpoints, joined with commas into `-etcdurl`. The etcd backend keeps the scripts
        there; the Lua `etcd` module uses them with either backend. An empty list passes no flag.
      '';
    };

    backend = mkOption {
      type = types.enum [
        "etcd"
        "file"
      ];
      default = "file";
      description = "Where the scripts are read from: `scriptDir` (file) or etcd.";
    };

    plugins = mkOption {
      type = types.listOf types.package;
      default = [ ];
      description = ''
        Packages of plugins: each one's top level holds plugin files (`name.py`) or plugin
        folders (`name/__init__.py`). They are joined, with the `bundledPlugins`, into one
        directory passed as `-plugin`.
      '';
    };

    natsUrl = mkOption {
      type = types.str;
      default = "";
      example = "nats://127.0.0.1:4222";
      description = ''
        NATS server to use (`-natsurl`). Empty: no flag, and the daemon runs its embedded NATS
        server on 127.0.0.1:4222.
      '';
    };

    dataDir = mkOption {
      type = types.str;
      default = "/var/lib/msgscript";
      description = "Working directory and home of the service; writable by it.";
    };

    scriptDir = mkOption {
      type = types.str;
      default = "${cfg.dataDir}/scripts";
      defaultText = lib.literalExpression ''"''${config.services.msgscript.dataDir}/scripts"'';
      description = "Script directory of the file backend (`-script`); created when inside `dataDir`.";
    };

    libraryDir = mkOption {
      type = types.str;
      default = "${cfg.dataDir}/libs";
      defaultText = lib.literalExpression ''"''${config.services.msgscript.dataDir}/libs"'';
      description = ''
        Lua library directory of the file backend (`-library`); created when inside `dataDir`.
        The package's bundled libraries are in its `share/msgscript/libraries`.
      '';
    };

    user = mkOption {
      type = types.str;
      default = "msgscript";
      description = "User the daemon runs as; created (as a system user) when left at the default.";
    };

    group = mkOption {
      type = types.str;
      default = "msgscript";
      description = "Group the daemon runs as; created when left at the default.";
    };

    enableTelemetry = mkOption {
      type = types.bool;
      default = false;
      description = "Export OpenTelemetry traces (sets `TELEMETRY_TRACES=1` and `OTEL_ENDPOINT`).";
    };

    otelEndpoint = mkOption {
      type = types.str;
      default = "localhost:4317";
      description = "OTLP/gRPC collector (`host:port`, plain text) the traces go to.";
    };

    # Ours.

    package = mkOption {
      type = types.package;
      default = pkgs.msgscript or (pkgs.callPackage ../pkgs/msgscript.nix { });
      defaultText = lib.literalExpression "pkgs.msgscript";
      description = "The msgscript package (the flake's overlay provides `pkgs.msgscript`).";
    };

    bundledPlugins = mkOption {
      type = types.listOf (types.enum (builtins.attrNames bundled));
      default = [ ];
      example = [
        "db"
        "httpscrape"
      ];
      description = ''
        Plugins shipped with the package to load, by name. None by default, as in the Go module:
        `gopher-lua-libs` gives scripts shell commands and raw TCP.
      '';
    };

    port = mkOption {
      type = types.port;
      default = 7643;
      description = "Port of the HTTP gateway (`-port`); ports below 1024 get CAP_NET_BIND_SERVICE.";
    };

    queueGroup = mkOption {
      type = types.nullOr types.str;
      default = null;
      description = ''
        NATS queue group shared by the instances (`-queue-group`); `""` makes every instance run
        every message. null: the daemon's default, `msgscript`.
      '';
    };

    timeout = mkOption {
      type = types.nullOr goDuration;
      default = null;
      example = "30s";
      description = "Default script timeout, a Go duration (`-timeout`). null: the daemon's default, 2m.";
    };

    maxMemory = mkOption {
      type = types.nullOr (types.either types.ints.positive byteSize);
      default = null;
      example = "64MiB";
      description = ''
        Memory cap of one Lua execution or WASM module, in bytes or with a unit (`-max-memory`).
        null: the daemon's default, 256 MiB.
      '';
    };

    maxInFlight = mkOption {
      type = types.nullOr types.ints.positive;
      default = null;
      description = "Messages and requests handled at once (`-max-in-flight`). null: the daemon's default, 256.";
    };

    workers = mkOption {
      type = types.nullOr (types.either types.ints.positive (types.enum [ "auto" ]));
      default = null;
      example = "auto";
      description = ''
        Worker processes, each with its own NATS connection in the queue group, sharing the HTTP
        port (`-workers`); `"auto"`: one per core. null: the daemon's default, 1.
      '';
    };

    watch = mkOption {
      type = types.bool;
      default = true;
      description = ''
        Follow `scriptDir` and `libraryDir` (file backend): a script or library added, edited or
        removed there is served within a second, without a restart; an edit that does not parse
        is logged and the previous version keeps serving. false: `-watch=false`, the directories
        are read once at startup.
      '';
    };

    production = mkOption {
      type = types.bool;
      default = false;
      description = ''
        Production mode (`-production`): scripts see `MSGSCRIPT_PRODUCTION=1`, and the web.lua
        library answers a failing route with a generic error instead of the error's text.
      '';
    };

    openFirewall = mkOption {
      type = types.bool;
      default = false;
      description = "Open `port` in the firewall.";
    };

    extraArgs = mkOption {
      type = types.listOf types.str;
      default = [ ];
      example = [
        "-log"
        "debug"
        "-browse"
        "off"
      ];
      description = "More daemon flags, appended to the command line as they are.";
    };
  };

  config = mkIf cfg.enable (mkMerge [
    {
      assertions = [
        {
          assertion = cfg.backend != "etcd" || cfg.etcdEndpoints != [ ];
          message = "services.msgscript.etcdEndpoints must not be empty with the etcd backend";
        }
        {
          assertion = hasPrefix "/" cfg.dataDir;
          message = "services.msgscript.dataDir must be an absolute path";
        }
      ];

      systemd.services.msgscript = {
        description = "msgscript: Lua, WASM and Podman functions on NATS subjects and HTTP";
        wantedBy = [ "multi-user.target" ];
        after = [ "network.target" ];
        restartIfChanged = true;

        environment = mkIf cfg.enableTelemetry {
          TELEMETRY_TRACES = "1";
          OTEL_ENDPOINT = cfg.otelEndpoint;
        };

        serviceConfig = {
          ExecStart = concatStringsSep " " (map execArg args);
          User = cfg.user;
          Group = cfg.group;
          WorkingDirectory = cfg.dataDir;
          Restart = "on-failure";
          RestartSec = 5;
          # Startup may include the embedded NATS server; on stop the daemon lets in-flight work
          # finish for its grace period (30s by default) before exiting.
          TimeoutStartSec = 30;
          TimeoutStopSec = 45;
          UMask = "0027";

          ProtectSystem = "strict";
          ProtectHome = true;
          PrivateTmp = true;
          PrivateDevices = true;
          # A user namespace would keep CAP_NET_BIND_SERVICE from reaching the host's ports.
          PrivateUsers = !privilegedPort;
          NoNewPrivileges = true;
          ProtectKernelTunables = true;
          ProtectKernelModules = true;
          ProtectKernelLogs = true;
          ProtectControlGroups = true;
          ProtectClock = true;
          ProtectHostname = true;
          ProtectProc = "invisible";
          RestrictNamespaces = true;
          RestrictRealtime = true;
          RestrictSUIDSGID = true;
          LockPersonality = true;
          RemoveIPC = true;
          # AF_UNIX for local sockets (syslog, a Podman API socket); no netlink, packet or raw sockets.
          RestrictAddressFamilies = [
            "AF_INET"
            "AF_INET6"
            "AF_UNIX"
          ];
          CapabilityBoundingSet = if privilegedPort then "CAP_NET_BIND_SERVICE" else "";
          SystemCallArchitectures = "native";
          SystemCallFilter = [
            "@system-service"
            "~@aio @chown @clock @cpu-emulation @debug @keyring @memlock @module @mount @obsolete @privileged @raw-io @reboot @setuid @swap"
          ];
          SystemCallErrorNumber = "EPERM";
          # No MemoryDenyWriteExecute: wasmtime compiles WASM modules to machine code at run time.
        }
        // lib.optionalAttrs privilegedPort { AmbientCapabilities = "CAP_NET_BIND_SERVICE"; }
        // (
          if stateDirectory != null then
            {
              StateDirectory = stateDirectory;
              StateDirectoryMode = "0750";
            }
          else
            { ReadWritePaths = [ cfg.dataDir ]; }
        );
      };

      systemd.tmpfiles.rules =
        optional (stateDirectory == null) (ownDirectory cfg.dataDir)
        ++ optionals (cfg.backend == "file") (
          map ownDirectory (builtins.filter insideDataDir [
            cfg.scriptDir
            cfg.libraryDir
          ])
        );
    }

    (mkIf (cfg.user == "msgscript") {
      users.users.msgscript = {
        isSystemUser = true;
        group = cfg.group;
        home = cfg.dataDir;
        description = "msgscript daemon";
      };
    })

    (mkIf (cfg.group == "msgscript") {
      users.groups.msgscript = { };
    })

    (mkIf cfg.openFirewall {
      networking.firewall.allowedTCPPorts = [ cfg.port ];
    })
  ]);
}
