"""The chained CNI plugin `vethguard-cni` (controller/cni/plugin.py)."""
