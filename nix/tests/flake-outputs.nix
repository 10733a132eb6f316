# Evaluates this repository's flake outputs against the stand-in nixpkgs, as a NixOS system that
# uses the flake would: the overlay applied to the package set (plus `extraOverlay`, to show that
# the module takes whatever `pkgs.msgscript` is), and the module imported through
# `nixosModules.default`. `nix flake check` (see tests/test_nix.py) checks the outputs' shapes.
{
  system ? "x86_64-linux",
  extraOverlay ? (final: prev: { }),
}:

let
  stand-in = ./stub-nixpkgs;
  lib = import (stand-in + "/lib");

  nixpkgs = (import (stand-in + "/flake.nix")).outputs { self = nixpkgs; } // {
    outPath = toString stand-in;
  };
  flake = (import ../../flake.nix).outputs {
    self = flake // {
      outPath = toString ../..;
    };
    inherit nixpkgs;
  };

  pkgs = import stand-in {
    inherit system;
    overlays = [
      flake.overlays.default
      extraOverlay
    ];
  };
  nixos = import (stand-in + "/nixos") { inherit lib pkgs; };
  config =
    (nixos.evalConfig {
      modules = [
        flake.nixosModules.default
        { services.msgscript.enable = true; }
      ];
    }).checked;
in
{
  packages = builtins.mapAttrs (_: builtins.mapAttrs (_: p: p.name)) flake.packages;
  defaultIsMsgscript = flake.packages.${system}.default.drvPath == flake.packages.${system}.msgscript.drvPath;
  nixosModules = builtins.attrNames flake.nixosModules;
  overlayPackage = pkgs.msgscript.outPath;
  modulePackage = config.services.msgscript.package.outPath;
  execStart = config.systemd.services.msgscript.serviceConfig.ExecStart;
}
