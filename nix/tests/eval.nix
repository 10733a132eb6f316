# Evaluates the NixOS module and the package against the stand-in nixpkgs (stub-nixpkgs/) and
# returns what tests/test_nix.py checks:
#
#   nix-instantiate --eval --strict --json nix/tests/eval.nix --arg settings '{ enable = true; }'
#
# `settings` are the services.msgscript options; a function gets the stand-in pkgs first (to
# build plugin packages). `extraModule` is one more NixOS module of the system. Failed assertions
# and option errors stop the evaluation, as they stop a NixOS build.
{
  settings ? { },
  extraModule ? { },
  system ? "x86_64-linux",
}:

let
  stand-in = ./stub-nixpkgs;
  lib = import (stand-in + "/lib");
  pkgs = import stand-in { inherit system; };
  nixos = import (stand-in + "/nixos") { inherit lib pkgs; };

  config =
    (nixos.evalConfig {
      modules = [
        ../modules
        { services.msgscript = if builtins.isFunction settings then settings pkgs else settings; }
        extraModule
      ];
    }).checked;

  service = config.systemd.services.msgscript or null;
  package = config.services.msgscript.package;
  pnames = map (p: p.pname);
in
{
  service =
    if service == null then
      null
    else
      {
        inherit (service)
          description
          wantedBy
          after
          restartIfChanged
          environment
          serviceConfig
          ;
        # The derivations the command line refers to (the package, the plugin directory).
        execStartInputs = builtins.attrNames (builtins.getContext service.serviceConfig.ExecStart);
      };
  users = builtins.mapAttrs (_: user: {
    inherit (user)
      isSystemUser
      isNormalUser
      group
      home
      ;
  }) config.users.users;
  groups = builtins.attrNames config.users.groups;
  firewall = config.networking.firewall.allowedTCPPorts;
  tmpfiles = config.systemd.tmpfiles.rules;

  package = {
    inherit (package)
      name
      pname
      version
      format
      drvPath
      makeWrapperArgs
      postInstall
      pythonImportsCheck
      pythonRelaxDeps
      pythonRemoveDeps
      ;
    path = package.outPath;
    src = "${package.src}";
    dependencies = pnames package.dependencies;
    buildSystem = pnames package.build-system;
    inherit (package.meta) mainProgram;
    natsServer = "${pkgs.nats-server}";
  };
}
