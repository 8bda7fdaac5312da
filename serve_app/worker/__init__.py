"""The model wing: the GPU-pinned ``ModelWorker`` deployment and the engine that runs one edit, with
its loading (placement, memory plans, profiles applied) and the tiny offline model. It reaches the
queue only through ``contract``. Nothing is imported here: the GPU benchmarks import single modules."""
