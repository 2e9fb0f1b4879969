"""Files copied to a target and run there (stdlib, numpy and onnxruntime only); see kd2deploy/targets/ssh.py."""
