"""Regional compilation of the repeated blocks (`compile_repeated_blocks`): one graph per block and cache state, no
graph break, nothing recompiled after a call's first step, images equal to eager within float tolerance."""

import pytest
import torch
from torch._dynamo.utils import counters

from tuna_hf import TunaEditPipeline, TunaFlowMatchScheduler, TunaPipeline
from tuna_hf.testing import tiny_tuna_model, tiny_tuna_processor

SIZE = 32


@pytest.fixture
def pipe(byte_tokenizer):
    model = tiny_tuna_model("patch", byte_tokenizer)
    scheduler = TunaFlowMatchScheduler.from_official_defaults(model.config.tuna_variant)
    pipe = TunaPipeline(
        transformer=model, processor=tiny_tuna_processor(byte_tokenizer, SIZE, SIZE), scheduler=scheduler
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def sample(pipe, **kwargs):
    prompts = ["a red circle", "a green square at the top"]
    kwargs = {"num_inference_steps": 4, "output_type": "pt", **kwargs}
    return pipe(prompts, generator=torch.Generator().manual_seed(0), **kwargs).images


def test_compiled_blocks_equal_eager_and_compile_only_on_the_first_step(pipe):
    torch._dynamo.reset()
    eager = sample(pipe)
    pipe.transformer.compile_repeated_blocks(fullgraph=True, dynamic=False)
    graphs_after_step = []

    def count_graphs(pipeline, step, timestep, callback_kwargs):
        graphs_after_step.append(counters["stats"]["unique_graphs"])
        return {}

    counters.clear()
    compiled = sample(pipe, callback_on_step_end=count_graphs)
    again = sample(pipe, callback_on_step_end=count_graphs)
    torch._dynamo.reset()
    assert graphs_after_step[0] > 0 and len(set(graphs_after_step)) == 1  # steps 2… and the next call reuse them
    assert not counters["graph_break"]
    torch.testing.assert_close(compiled, eager, rtol=0, atol=2 / 255)
    torch.testing.assert_close(again, compiled, rtol=0, atol=0)


def test_compiled_blocks_serve_every_kind_of_call(pipe):
    """Prompt lengths, batch sizes, no guidance, no prompt cache, editing: each compiles what it needs, within the
    limits `compile_repeated_blocks` sets (dynamo's eager backend: the same guards as inductor, without codegen)."""
    torch._dynamo.reset()
    pipe.transformer.compile_repeated_blocks(fullgraph=True, backend="eager")
    calls = [
        {"prompt": "a red circle"},
        {"prompt": "a much longer prompt about a green triangle"},
        {"prompt": ["a red circle", "a blue square at the bottom right"]},
        {"prompt": "a red circle", "guidance_scale": 1.0},
        {"prompt": "a red circle", "use_prompt_cache": False},
        {"prompt": ["one", "two", "three"], "negative_prompt": ["x", "yy", "zzz"]},
    ]
    for kwargs in calls:
        images = pipe(num_inference_steps=2, output_type="pt", **kwargs).images
        assert torch.isfinite(images).all()
    edit = TunaEditPipeline.from_pipe(pipe)
    edit.set_progress_bar_config(disable=True)
    assert torch.isfinite(edit(images[0], "make it blue", num_inference_steps=2, output_type="pt").images).all()
    torch._dynamo.reset()
