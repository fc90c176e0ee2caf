"""GPU cost: the GPU check (step time, MFU, precision paths) and GPU-hour estimates."""
