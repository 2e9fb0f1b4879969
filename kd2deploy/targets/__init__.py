"""Benchmarks on the user's edge devices over SSH: config, transport, the files that run there, the results.

- ``address.py``: target addresses and remote paths, allow-listed before anything reaches ``ssh``.
- ``config.py``: the ``targets:`` section of a pipeline file.
- ``ssh.py``: the system OpenSSH client, called with argument lists; failures become one line naming the target.
- ``remote/``: standalone files copied to the target (stdlib, numpy and onnxruntime only): the bootstrap that
  unpacks a bundle into a fresh temporary folder and removes it, the agent that benchmarks, the energy sensors.
- ``runner.py``: checks a target, sends the models and real inputs, brings back results with their sha256.
"""
