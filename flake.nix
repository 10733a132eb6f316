{
  description = "msgscript: run Lua, WASM and Podman functions when NATS messages or HTTP requests arrive";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs =
    { self, nixpkgs }:
    let
      systems = [
        "x86_64-linux"
        "aarch64-linux"
      ];
      forAllSystems = f: nixpkgs.lib.genAttrs systems (system: f system nixpkgs.legacyPackages.${system});
    in
    {
      packages = forAllSystems (
        system: pkgs: {
          msgscript = pkgs.callPackage ./nix/pkgs/msgscript.nix { };
          default = self.packages.${system}.msgscript;
        }
      );

      # Adds `msgscript`; the module's `package` option defaults to it.
      overlays.default = final: prev: {
        msgscript = final.callPackage ./nix/pkgs/msgscript.nix { };
      };

      nixosModules.default = {
        imports = [ ./nix/modules ];
      };
      nixosModules.msgscript = self.nixosModules.default;
    };
}
