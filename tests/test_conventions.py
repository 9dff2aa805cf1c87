"""The calls transformers' and diffusers' own common tests make on a model, a processor and a pipeline, made on
TUNA: output tuples, `inputs_embeds`, image features, assisted and static-cache decoding, RoPE scaling, parallel plans,
checkpointing, processor kwargs, LoRA files and scales, config round trips, and one repository id for everything."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import (
    AutoModel,
    AutoModelForImageTextToText,
    AutoProcessor,
    CompileConfig,
    pipeline,
)
from transformers.modeling_outputs import BaseModelOutputWithPooling

from tuna_hf import TunaEditPipeline, TunaFlowMatchScheduler, TunaForUnifiedMultimodal, TunaPipeline, TunaProcessor
from tuna_hf.losses import prepare_flow_training
from tuna_hf.testing import add_random_lora, tiny_tuna_config, tiny_tuna_model, tiny_tuna_processor

SIZE = 32
SHAPES = "checkpoints/shapes-tuna-2"


def question(processor, texts=("What is this?",), size=SIZE):
    """Chat-template prompts with one random image each (left-padded together)."""
    prompts = [
        processor.apply_chat_template(
            [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}],
            add_generation_prompt=True,
        )
        for text in texts
    ]
    images = [torch.rand(3, size, size, generator=torch.Generator().manual_seed(i)) for i in range(len(texts))]
    return processor(text=prompts, images=images, height=size, width=size, padding=True)


@pytest.fixture(scope="module")
def tiny(byte_tokenizer):
    return tiny_tuna_model("patch", byte_tokenizer), tiny_tuna_processor(byte_tokenizer, SIZE, SIZE)


@pytest.fixture(scope="module")
def tiny_question_inputs(byte_tokenizer):
    return question(tiny_tuna_processor(byte_tokenizer, SIZE, SIZE), ("What is this?", "And the colour?"))


@pytest.fixture(scope="module")
def inputs(tiny):
    return question(tiny[1], ("What is this?", "And what colour is the shape here?"))


@pytest.fixture(scope="module")
def greedy(tiny, inputs):
    return tiny[0].generate(**inputs, max_new_tokens=6, do_sample=False)


class TestModel:
    @torch.no_grad()
    def test_tuple_outputs_hold_the_dict_outputs(self, tiny, inputs):
        model, _ = tiny
        images = {"input_ids": inputs["input_ids"], "image_latents": torch.rand(2, 3, 1, SIZE, SIZE)}
        images["timesteps"] = torch.tensor([0.4, 0.7])
        for module, kwargs in ((model, {**images, "labels": inputs["input_ids"]}), (model.model, images)):
            as_dict, as_tuple = module(**kwargs), module(**kwargs, return_dict=False)
            expected = as_dict.to_tuple()
            assert isinstance(as_tuple, tuple) and len(as_tuple) == len(expected)
            for a, b in zip(as_tuple, expected, strict=True):
                if isinstance(a, torch.Tensor):
                    assert torch.equal(a, b)
            assert as_dict.image_hidden_states.shape == (2, 4, 64)

    @torch.no_grad()
    def test_inputs_embeds_with_images(self, tiny, inputs, greedy):
        """Spans are located from `input_ids`, or from the embeddings of `<|image_pad|>` (as Llava / Qwen2-VL do)."""
        model, _ = tiny
        embeds = model.get_input_embeddings()(inputs["input_ids"])
        common = {"attention_mask": inputs["attention_mask"], "pixel_values": inputs["pixel_values"]}
        from_ids = model(input_ids=inputs["input_ids"], **common).logits
        torch.testing.assert_close(model(inputs_embeds=embeds, **common).logits, from_ids)
        new = model.generate(inputs_embeds=embeds, **common, max_new_tokens=6, do_sample=False)
        assert torch.equal(new, greedy[:, inputs["input_ids"].shape[1] :])
        with pytest.raises(ValueError, match="inputs_embeds` whose image slots hold the embedding"):
            model(inputs_embeds=torch.zeros_like(embeds), **common)
        with pytest.raises(ValueError, match="contain image spans but neither `pixel_values`"):
            model(inputs_embeds=embeds, attention_mask=inputs["attention_mask"])

    @torch.no_grad()
    def test_a_prepared_4d_mask_cannot_carry_image_spans(self, tiny, inputs):
        model, _ = tiny
        length = inputs["input_ids"].shape[1]
        causal = torch.ones(2, 1, length, length, dtype=torch.bool).tril()
        with pytest.raises(ValueError, match="prepared 4-D `attention_mask` cannot carry the omni mask"):
            model(input_ids=inputs["input_ids"], attention_mask=causal, pixel_values=inputs["pixel_values"])
        text = inputs["input_ids"][:, :5]
        as_2d = model(input_ids=text).logits
        torch.testing.assert_close(model(input_ids=text, attention_mask=causal[:, :, :5, :5]).logits, as_2d)

    @torch.no_grad()
    def test_text_only_generate_from_inputs_embeds(self, tiny):
        model, processor = tiny
        ids = processor.tokenizer(["hello there"], return_tensors="pt")["input_ids"]
        expected = model.generate(input_ids=ids, max_new_tokens=4, do_sample=False)[:, ids.shape[1] :]
        embeds = model.get_input_embeddings()(ids)
        assert torch.equal(model.generate(inputs_embeds=embeds, max_new_tokens=4, do_sample=False), expected)

    @torch.no_grad()
    def test_image_features_from_pixel_values(self, byte_tokenizer, tiny_question_inputs):
        """`get_image_features(pixel_values=...)` on both classes, as transformers' Llava: the visual tokens as
        `pooler_output`, the same the forward places in the spans."""
        for encoder in ("patch", "siglip", "vae_siglip"):
            model = tiny_tuna_model(encoder, byte_tokenizer, sample_vae_posterior=False)
            inputs = tiny_question_inputs
            features = model.get_image_features(pixel_values=inputs["pixel_values"])
            assert isinstance(features, BaseModelOutputWithPooling)
            assert features.pooler_output.shape == (2, 4, 64)
            torch.testing.assert_close(features.pooler_output, model(**inputs).image_hidden_states)
            assert torch.equal(
                model.model.get_image_features(inputs["pixel_values"], return_dict=False)[0], features.pooler_output
            )

    @torch.no_grad()
    def test_assisted_and_prompt_lookup_decoding_equal_greedy(self, tiny, byte_tokenizer):
        """transformers hands the assistant its prefill as "not the first iteration": the images still go with it.
        (Assisted decoding takes one prompt at a time.)"""
        model, processor = tiny
        inputs = question(processor)
        greedy = model.generate(**inputs, max_new_tokens=6, do_sample=False)
        assistant = tiny_tuna_model("patch", byte_tokenizer, seed=1)
        assisted = model.generate(**inputs, max_new_tokens=6, do_sample=False, assistant_model=assistant)
        lookup = model.generate(**inputs, max_new_tokens=6, do_sample=False, prompt_lookup_num_tokens=2)
        assert torch.equal(assisted, greedy) and torch.equal(lookup, greedy)

    def test_rope_scaling_extends_the_context(self, byte_tokenizer):
        """The context check uses the effective context of a scaled RoPE, as Qwen2 allows it."""
        config = tiny_tuna_config("patch", byte_tokenizer)
        assert config.context_length == 8192
        for rope_type in ("linear", "dynamic", "yarn"):
            parameters = {"rope_type": rope_type, "rope_theta": 1e6, "factor": 2.0}
            if rope_type == "yarn":
                parameters["original_max_position_embeddings"] = 8192
            config.text_config.rope_parameters = parameters
            assert config.context_length == 16384
        model = TunaForUnifiedMultimodal(config).eval()
        with torch.no_grad():
            assert model(input_ids=torch.zeros(1, 9000, dtype=torch.long), logits_to_keep=1).logits.shape[1] == 1
            with pytest.raises(ValueError, match="exceeds the context of 16384 tokens"):
                model(input_ids=torch.zeros(1, 16385, dtype=torch.long))

    @torch.no_grad()
    def test_static_cache_and_compiled_decoding_equal_the_dynamic_cache(self, tiny, inputs):
        """The decoding steps on a static cache compile to one graph (fullgraph, no recompilation over 16 tokens) and
        give the dynamic cache's greedy tokens."""
        import torch._dynamo
        from torch._dynamo.utils import counters

        model, _ = tiny
        tokens = {"max_new_tokens": 16, "min_new_tokens": 16, "do_sample": False}
        greedy = model.generate(**inputs, **tokens)
        assert torch.equal(model.generate(**inputs, **tokens, cache_implementation="static"), greedy)
        compile_config = CompileConfig(fullgraph=True, dynamic=False, mode="default")
        compile_config._compile_all_devices = True  # transformers' switch to compile on CPU too
        torch._dynamo.reset()
        counters.clear()
        compiled = model.generate(**inputs, **tokens, cache_implementation="static", compile_config=compile_config)
        assert torch.equal(compiled, greedy)
        assert counters["stats"]["unique_graphs"] == 1 and model._can_compile_fullgraph

    def test_parallel_plans_name_existing_modules(self, tiny):
        model, _ = tiny
        assert model._tp_plan["lm_head"] == "colwise_gather_output"
        assert model._pp_plan["lm_head"] == (["hidden_states"], ["logits"])
        names = [name for name, _ in model.named_modules()]
        for pattern in [*model._tp_plan, *model._pp_plan]:
            regex = pattern.replace(".", r"\.").replace("*", r"\d+")
            assert any(re.fullmatch(regex, name) for name in names), pattern

    @pytest.mark.parametrize("encoder", ["vae_siglip", "patch"])
    def test_checkpointing_trains_with_all_three_losses(self, byte_tokenizer, encoder):
        """Text, velocity (Tuna) and x0 (Tuna-2) losses give the same gradients with activation checkpointing; a
        batch without generation targets leaves the flow head without gradients (DDP needs
        `find_unused_parameters=True`, which `examples/train.py` sets)."""
        processor = tiny_tuna_processor(byte_tokenizer, SIZE, SIZE)
        batch = dict(question(processor))
        rows = processor.build_generation_inputs(["a red square"], height=SIZE, width=SIZE)
        length = max(batch["input_ids"].shape[1], rows["input_ids"].shape[1])
        pad = processor.pad_token_id

        def right_pad(tensor, value):
            return torch.nn.functional.pad(tensor, (0, length - tensor.shape[1]), value=value)

        batch = {
            "input_ids": torch.cat([right_pad(batch["input_ids"], pad), right_pad(rows["input_ids"], pad)]),
            "attention_mask": torch.cat([right_pad(batch["attention_mask"], 0), right_pad(rows["attention_mask"], 0)]),
            "pixel_values": torch.cat([batch["pixel_values"], torch.rand(1, 3, SIZE, SIZE) * 2 - 1]),
            "generation_targets": torch.tensor([False, True]),
        }
        batch["labels"] = torch.where(batch["attention_mask"].bool(), batch["input_ids"], -100)
        gradients = []
        for checkpointing in (False, True):
            model = tiny_tuna_model(encoder, byte_tokenizer, sample_vae_posterior=False).train()
            if checkpointing:
                model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            torch.manual_seed(0)
            outputs = model(**prepare_flow_training(model, batch))
            assert outputs.ntp_loss is not None and outputs.flow_loss is not None
            outputs.loss.backward()
            gradients.append({name: p.grad for name, p in model.named_parameters() if p.grad is not None})
        assert gradients[0].keys() == gradients[1].keys()
        assert any(name.startswith("flow_head.") for name in gradients[0])
        for name, gradient in gradients[0].items():
            torch.testing.assert_close(gradients[1][name], gradient, atol=1e-5, rtol=1e-4, msg=name)

        model = tiny_tuna_model(encoder, byte_tokenizer).train()
        model.activation_checkpointing_enable()
        text = processor.tokenizer(["hi"], return_tensors="pt")["input_ids"]
        model(input_ids=text, labels=text).loss.backward()
        assert all(p.grad is None for p in model.flow_head.parameters())


class TestProcessor:
    def test_kwargs_flow_through_the_processor_machinery(self, tiny):
        _, processor = tiny
        image, text = torch.rand(3, SIZE, SIZE), "Describe <image>"
        assert isinstance(processor(text=text, images=[image])["input_ids"], torch.Tensor)  # "pt" by default
        assert isinstance(processor(text=text, images=[image], return_tensors="np")["input_ids"], np.ndarray)
        assert isinstance(
            processor(text=text, images=[image], common_kwargs={"return_tensors": None})["input_ids"], list
        )
        padded = processor(text=text, images=[image], text_kwargs={"max_length": 40, "padding": "max_length"})
        assert padded["input_ids"].shape == (1, 40) and padded["attention_mask"][0, 0] == 0  # left padding
        with pytest.raises(ValueError, match="`max_length`"):
            processor(text=text, images=[image], text_kwargs={"max_length": 8})
        with pytest.raises(ValueError, match="would cut image spans"):
            processor(text=text, images=[image], truncation=True, max_length=40)

    def test_a_custom_chat_template_is_used_as_given(self, tiny):
        _, processor = tiny
        conversation = [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]
        custom = "{% for m in messages %}{{ m['role'] }}: {{ m['content'][0]['text'] }}{% endfor %}"
        assert processor.apply_chat_template(conversation, chat_template=custom) == "user: hi"
        assert processor.apply_chat_template(conversation).startswith("<|im_start|>system\n")


class TestPipelines:
    @pytest.fixture
    def pipe(self, byte_tokenizer):
        model = tiny_tuna_model("patch", byte_tokenizer)
        processor = tiny_tuna_processor(byte_tokenizer, SIZE, SIZE)
        return TunaPipeline(model, processor, TunaFlowMatchScheduler.from_official_defaults("tuna_2"))

    @staticmethod
    def sample(pipe, **kwargs):
        kwargs = {"prompt": "a red circle", "num_inference_steps": 2, "output_type": "latent", **kwargs}
        return pipe(**kwargs, generator=torch.Generator().manual_seed(0)).images

    def test_lora_files_in_both_formats(self, tmp_path, pipe, byte_tokenizer):
        from peft import get_peft_model_state_dict

        # lora_alpha = r: a `.bin` LoRA file carries no adapter config, and diffusers reads its alpha as r.
        add_random_lora(pipe.transformer, lora_alpha=4)
        adapted = self.sample(pipe)
        layers = get_peft_model_state_dict(pipe.transformer, adapter_name="style")
        for safe in (True, False):
            folder = tmp_path / str(safe)
            TunaPipeline.save_lora_weights(folder, transformer_lora_layers=layers, safe_serialization=safe)
            assert (folder / ("pytorch_lora_weights." + ("safetensors" if safe else "bin"))).exists()
            fresh = TunaPipeline.from_pipe(pipe, transformer=tiny_tuna_model("patch", byte_tokenizer))
            fresh.load_lora_weights(folder, adapter_name="style")
            torch.testing.assert_close(self.sample(fresh), adapted)

    def test_a_lora_bin_is_read_without_unpickling_objects(self, tmp_path, pipe):
        torch.save({"transformer.q_proj.lora_A.weight": torch.nn.Linear(1, 1)}, tmp_path / "pytorch_lora_weights.bin")
        with pytest.raises(OSError, match="Unable to load weights") as refused:
            pipe.load_lora_weights(tmp_path)
        causes = []
        error = refused.value
        while error is not None:
            causes.append(str(error))
            error = error.__context__
        assert any("Weights only load failed" in cause for cause in causes)

    def test_a_per_call_lora_scale_keeps_the_adapters_weights(self, pipe):
        """A call's scale multiplies `set_adapters`' weight and is undone exactly; fused adapters are refused."""
        add_random_lora(pipe.transformer)
        pipe.set_adapters(["style"], adapter_weights=[0.5])
        half = self.sample(pipe)
        torch.testing.assert_close(
            self.sample(pipe, attention_kwargs={"scale": 2.0}),
            self.sample(TunaPipeline.from_pipe(pipe), attention_kwargs={"scale": 2.0}),
        )
        self.sample(pipe, attention_kwargs={"scale": 0.0})
        torch.testing.assert_close(self.sample(pipe), half)
        pipe.set_adapters(["style"], adapter_weights=[1.0])
        torch.testing.assert_close(self.sample(pipe, attention_kwargs={"scale": 0.5}), half)
        pipe.fuse_lora(components=["transformer"])
        with pytest.raises(ValueError, match="cannot scale fused adapters"):
            self.sample(pipe, attention_kwargs={"scale": 0.5})

    def test_a_per_call_lora_scale(self, pipe):
        """`attention_kwargs={"scale": s}` as in diffusers: 0 is the model without the adapter, in both pipelines;
        the scale lasts one call, and `fuse_lora(lora_scale=s)` gives what the unfused call at s gives."""
        edit = TunaEditPipeline.from_pipe(pipe)
        source = {"image_latents": torch.rand(1, 3, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(5))}
        source["prompt"] = "make it blue"
        base, edit_base = self.sample(pipe), self.sample(edit, **source)
        add_random_lora(pipe.transformer)
        full = self.sample(pipe)
        assert (full - base).abs().max() > 1e-3 and (self.sample(edit, **source) - edit_base).abs().max() > 1e-3
        torch.testing.assert_close(self.sample(pipe, attention_kwargs={"scale": 0.0}), base)
        torch.testing.assert_close(self.sample(edit, **source, attention_kwargs={"scale": 0.0}), edit_base)
        half = self.sample(pipe, attention_kwargs={"scale": 0.5})
        assert (half - full).abs().max() > 1e-4 and (half - base).abs().max() > 1e-4
        torch.testing.assert_close(self.sample(pipe), full)
        pipe.fuse_lora(components=["transformer"], lora_scale=0.5)
        torch.testing.assert_close(self.sample(pipe), half, atol=1e-4, rtol=1e-4)
        with pytest.raises(ValueError, match="`attention_kwargs` takes only `scale`"):
            self.sample(pipe, attention_kwargs={"scale": 1.0, "heads": 2})

    def test_saved_configs_load_equal(self, tmp_path, pipe):
        pipe.scheduler.save_pretrained(tmp_path / "scheduler")
        loaded = TunaFlowMatchScheduler.from_pretrained(tmp_path / "scheduler")

        def public(config):
            return {key: value for key, value in config.items() if not key.startswith("_")}

        assert public(loaded.config) == public(pipe.scheduler.config)
        pipe.save_pretrained(tmp_path / "pipe")
        again = TunaPipeline.from_pretrained(tmp_path / "pipe", dtype=torch.float32)
        assert public(again.config) == public(pipe.config)


class TestOneRepositoryId:
    """A pipeline repository's root serves transformers too, without a second copy of the weights."""

    @staticmethod
    def check(repository):
        from tuna_hf.demo.shapes import Scene

        weights = list(repository.rglob("*.safetensors"))
        assert [path.relative_to(repository).parts[0] for path in weights] == ["transformer"] * len(weights)
        reference = AutoModelForImageTextToText.from_pretrained(repository, subfolder="transformer")
        for loader in (AutoModel, AutoModelForImageTextToText):
            for kwargs in ({}, {"subfolder": "transformer"}):
                model = loader.from_pretrained(repository, **kwargs)
                assert type(model) is TunaForUnifiedMultimodal
                state = model.state_dict()
                assert all(torch.equal(value, state[key]) for key, value in reference.state_dict().items())
        assert isinstance(AutoProcessor.from_pretrained(repository), TunaProcessor)
        answerer = pipeline("image-text-to-text", model=str(repository))
        image = Scene("blue", "triangle", "top right").draw()
        messages = [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": "Q?"}]}]
        assert isinstance(answerer(text=messages, max_new_tokens=2, return_full_text=False)[0]["generated_text"], str)
        assert isinstance(TunaPipeline.from_pretrained(repository), TunaPipeline)

    def test_the_shipped_checkpoint(self):
        """The committed shapes checkpoint answers through `pipeline("image-text-to-text", model=repo)`."""
        from tuna_hf.demo.shapes import Scene

        repository = Path(__file__).resolve().parents[1] / SHAPES
        self.check(repository)
        answerer = pipeline("image-text-to-text", model=str(repository))
        image = Scene("blue", "triangle", "top right").draw()
        content = [{"type": "image", "image": image}, {"type": "text", "text": "What shape is it?"}]
        answer = answerer(text=[{"role": "user", "content": content}], max_new_tokens=4, return_full_text=False)
        assert answer[0]["generated_text"] == "triangle"

    def test_save_pretrained_output(self, tmp_path, byte_tokenizer):
        model = tiny_tuna_model("siglip", byte_tokenizer)
        processor = tiny_tuna_processor(byte_tokenizer, 64, 64)
        TunaPipeline(model, processor, TunaFlowMatchScheduler.from_official_defaults("tuna_r")).save_pretrained(
            tmp_path, max_shard_size="200KB"
        )
        assert len(list((tmp_path / "transformer").glob("*.safetensors"))) > 1  # sharded: the index follows it
        assert json.loads((tmp_path / "model.safetensors.index.json").read_text())["weight_map"]
        self.check(tmp_path)

    def test_saving_again_and_variants(self, tmp_path, byte_tokenizer):
        """A sharded save, then an unsharded one into the same folder (transformers leaves the old index), and a
        variant save: the root follows what `transformer/` holds."""
        model = tiny_tuna_model("patch", byte_tokenizer)
        scheduler = TunaFlowMatchScheduler.from_official_defaults("tuna_2")
        pipe = TunaPipeline(model, tiny_tuna_processor(byte_tokenizer, 64, 64), scheduler)
        pipe.save_pretrained(tmp_path, max_shard_size="200KB")
        pipe.save_pretrained(tmp_path)
        assert (tmp_path / "transformer" / "model.safetensors.index.json").exists()  # stale, left by transformers
        self.check(tmp_path)
        pipe.save_pretrained(tmp_path / "fp16", variant="fp16")
        assert (tmp_path / "fp16" / "model.safetensors.index.fp16.json").exists()
        loaded = AutoModelForImageTextToText.from_pretrained(tmp_path / "fp16", variant="fp16")
        assert torch.equal(loaded.lm_head.weight, model.lm_head.weight)

    def test_a_converted_repository(self, tmp_path):
        from test_conversion import conversion_arguments

        from tuna_hf.convert_official import main

        main(conversion_arguments("tuna_2", tmp_path, tmp_path / "repo"))
        self.check(tmp_path / "repo")
