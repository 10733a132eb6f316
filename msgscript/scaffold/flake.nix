# This project on NixOS, with the msgscript flake (see msgscript's docs/deploy.md, "Nix and NixOS").
#
#   nix develop          a shell with msgscript and msgscriptcli, to run and test the project
#
# and, in a NixOS system's flake, `modules = [ this-project.nixosModules.default ... ]`.
{
  inputs = {
    nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";
    # Where your msgscript comes from: its repository, or a local checkout (`git+file:///path/to/msgscript`).
    msgscript.url = "github:<owner>/<msgscript repository>";
    msgscript.inputs.nixpkgs.follows = "nixpkgs";
  };

  outputs =
    { nixpkgs, msgscript, ... }:
    let
      systems = [
        "x86_64-linux"
        "aarch64-linux"
      ];
      forAllSystems = f: nixpkgs.lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system} system);
    in
    {
      devShells = forAllSystems (
        pkgs: system: {
          default = pkgs.mkShell { packages = [ msgscript.packages.${system}.default ]; };
        }
      );

      # The service `services.msgscript` (file backend) serving scripts/ and libraries/ of this flake.
      nixosModules.default = {
        imports = [ msgscript.nixosModules.default ];
        services.msgscript = {
          enable = true;
          scriptDir = "${./scripts}";
          libraryDir = "${./libraries}";
          extraArgs = [ "-production" ];
        };
      };
    };
}
