"""The project's demo world: the synthetic shapes the embedded checkpoint (`checkpoints/shapes-tuna-2`) was trained on
(`shapes`) and ShapesBench, which scores a model on it (`shapes_bench`). Not needed to run TUNA itself."""
