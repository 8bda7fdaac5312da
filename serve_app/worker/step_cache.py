"""A preset's step cache (``presets.StepCache``) on a held pipeline, through cache-dit's DBCache.

cache-dit hooks the transformer's blocks: at each step the first blocks run, and when their output
barely changed since the last full step the remaining blocks' residual is reused. The hooks belong to
the pipeline, not to a preset, so the engine arms them for a preset that asks and takes them off for
one that does not: an uncached preset then runs the bare pipeline, pixel for pixel as if no cache had
ever been armed (``disable_cache`` restores the original forwards). CFG presets cache the conditional
and unconditional passes separately; CFG-off presets (Lightning) must not, or cache-dit counts each
step twice and caches the wrong ones.
"""

import logging

log = logging.getLogger(__name__)


def armed_for(preset) -> tuple | None:
    """What the hooks must be armed with for ``preset`` (None: no hooks)."""
    if preset.step_cache is None:
        return None
    return (preset.step_cache, preset.cfg_scale > 1, preset.steps)


def disarm_unless(pipe, armed: tuple | None, preset) -> tuple | None:
    """Take the hooks off ``pipe`` unless they are armed as ``preset`` wants; what is armed after."""
    if armed is None or armed == armed_for(preset):
        return armed
    import cache_dit

    cache_dit.disable_cache(pipe)
    return None


def arm(pipe, armed: tuple | None, preset) -> tuple | None:
    """Arm the hooks on ``pipe`` as ``preset`` wants (after ``disarm_unless``); what is armed after."""
    wanted = armed_for(preset)
    if wanted is None or armed == wanted:
        return armed
    import cache_dit

    c = preset.step_cache
    cache_dit.enable_cache(pipe, cache_config=cache_dit.DBCacheConfig(
        Fn_compute_blocks=c.compute_first_blocks, Bn_compute_blocks=c.compute_last_blocks,
        residual_diff_threshold=c.threshold, max_warmup_steps=c.warmup_steps, warmup_interval=c.warmup_interval,
        max_cached_steps=c.max_cached_steps, max_continuous_cached_steps=c.max_continuous_cached_steps,
        enable_separate_cfg=preset.cfg_scale > 1, num_inference_steps=preset.steps))
    log.info("[ModelWorker] step cache armed for %s (first %d blocks computed, threshold %g, %d warm-up steps)",
             preset.name, c.compute_first_blocks, c.threshold, c.warmup_steps)
    return wanted


def full_steps(pipe, armed: tuple | None, steps: int) -> int:
    """Steps of the last call the transformer ran in full: all of them without hooks; with them,
    those cache-dit did not serve from the cache (its statistics start anew at each call)."""
    if armed is None:
        return steps
    import cache_dit

    stats = cache_dit.summary(pipe, logging=False)[-1]  # the whole transformer's, last
    return max(0, stats.accumulated_executed_steps - stats.accumulated_cached_steps)
