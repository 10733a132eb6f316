# NKey signatures for NATS (nats-io/nkeys.py), for nixpkgs releases that do not package it.
{
  lib,
  buildPythonPackage,
  fetchPypi,
  setuptools,
  pynacl,
}:

buildPythonPackage rec {
  pname = "nkeys";
  version = "0.2.1";
  pyproject = true;

  src = fetchPypi {
    inherit pname version;
    hash = "sha256-OiAdzSA9i7BboohNRBsskpGLKlN6ENMk5zc4iH3enaM=";
  };

  build-system = [ setuptools ];
  dependencies = [ pynacl ];

  pythonImportsCheck = [ "nkeys" ];

  meta = {
    description = "Ed25519 public-key signatures for the NATS ecosystem";
    homepage = "https://github.com/nats-io/nkeys.py";
    license = lib.licenses.asl20;
  };
}
