"""Run by `test_training.py` under torchrun: FSDP2 `fully_shard` of a tiny TUNA on CPU (gloo), sharding the blocks
named in `_no_split_modules` as accelerate's TRANSFORMER_BASED_WRAP would; two optimizer steps, then the gathered
full state dict is saved by rank 0 with `save_pretrained`."""

import sys

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.fsdp import fully_shard

from tuna_hf.losses import prepare_flow_training
from tuna_hf.testing import tiny_tuna_model, tiny_tuna_processor


def main(output: str):
    dist.init_process_group("gloo")
    processor = tiny_tuna_processor(height=32, width=32)
    model = tiny_tuna_model("patch", processor.tokenizer).train()
    for module in model.modules():
        if type(module).__name__ in model._no_split_modules:
            fully_shard(module)
    fully_shard(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    inputs = processor.build_generation_inputs(["a red square"], height=32, width=32)
    torch.manual_seed(dist.get_rank())
    for _ in range(2):
        images = torch.rand(1, 3, 1, 32, 32)
        batch = {**inputs, "image_latents": images, "generation_targets": [True]}
        model(**prepare_flow_training(model, batch)).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    state_dict = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if dist.get_rank() == 0:
        fresh = tiny_tuna_model("patch", processor.tokenizer)
        fresh.save_pretrained(output, state_dict=state_dict)
        torch.save(state_dict, f"{output}/gathered.pt")
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
