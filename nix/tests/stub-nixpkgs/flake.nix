{
  description = "Stand-in for nixpkgs in msgscript's offline nix checks";

  outputs =
    { self }:
    let
      lib = import ./lib;
    in
    {
      inherit lib;
      legacyPackages = lib.genAttrs [ "x86_64-linux" "aarch64-linux" ] (
        system: import ./. { inherit system; }
      );
    };
}
