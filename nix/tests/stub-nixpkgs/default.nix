# `import nixpkgs { system; overlays; }` of the stand-in (see pkgs.nix).
{
  system ? "x86_64-linux",
  overlays ? [ ],
  config ? { },
}:

import ./pkgs.nix {
  inherit system overlays;
  lib = import ./lib;
}
