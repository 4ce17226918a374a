"""PyTorch counterparts of awt's benchmarks (optional extra: ``.[bench]``)."""
