"""UNIP: attention-pattern analysis (NMI), NMI-HAD distillation, InfMix and LL-FPN."""
