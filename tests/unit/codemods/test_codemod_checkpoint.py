"""Golden before/after tests of `gradient-checkpointing`, one loader shape per test.

Call shapes name the model with the `models` option and take `autograd: keep`, so only the
wrap's layout and the import show; load shapes let the codemod find the model, decide where
autograd is on and which mode fits, and show the enable statement where a backward pass
uses it. Which calls are left alone, and why, is pinned by the corpus (test_corpus.py).
"""

from __future__ import annotations

from libcst.codemod import CodemodTest

from qpatch.codemods.checkpoint import GradientCheckpointing

ENABLE_SELF_DIT = """\
                    try:  # qpatch: turn on the model's own gradient checkpointing; harmless where it has none
                        (getattr(self.dit, "enable_gradient_checkpointing", None) or self.dit.gradient_checkpointing_enable)()
                    except Exception:
                        [setattr(m, "gradient_checkpointing", True) for m in getattr(self.dit, "modules", list)() if hasattr(m, "gradient_checkpointing")]
"""  # noqa: E501


class GradientCheckpointingLoadTest(CodemodTest):
    TRANSFORM = GradientCheckpointing

    def test_standin_loader_runs_without_autograd(self) -> None:
        before = """
            import torch


            class QwenImageLoader:
                def load(self, model_path, dtype):
                    self.model = QwenImageModel.from_pretrained(model_path, torch_dtype=dtype)
                    self.model.eval()

                def run(self, input_ids, pixel_values, timestep):
                    with torch.inference_mode(False), torch.enable_grad():
                        output = self.model(input_ids, pixel_values, timestep)
                    return output
        """
        after = """
            import torch
            from torch.utils.checkpoint import checkpoint


            class QwenImageLoader:
                def load(self, model_path, dtype):
                    self.model = QwenImageModel.from_pretrained(model_path, torch_dtype=dtype)
                    self.model.eval()

                def run(self, input_ids, pixel_values, timestep):
                    with torch.inference_mode(False), torch.enable_grad():
                        output = torch.no_grad()(checkpoint)(self.model, input_ids, pixel_values, timestep, use_reentrant=False)
                    return output
        """  # noqa: E501
        self.assertCodemod(before, after)

    def test_node_that_trains_keeps_checkpoint_only_and_turns_on_the_models_own(self) -> None:
        before = """
            import torch


            class LoraFit:
                def load(self, path):
                    self.dit = QwenImageTransformer2DModel.from_pretrained(path)

                @torch.inference_mode(False)
                def fit(self, x, target):
                    loss = (self.dit(x) - target).pow(2).mean()
                    loss.backward()
        """
        after = f"""
            import torch
            from torch.utils.checkpoint import checkpoint


            class LoraFit:
                def load(self, path):
                    self.dit = QwenImageTransformer2DModel.from_pretrained(path)
{ENABLE_SELF_DIT}
                @torch.inference_mode(False)
                def fit(self, x, target):
                    loss = (checkpoint(self.dit, x, use_reentrant=False) - target).pow(2).mean()
                    loss.backward()
        """
        self.assertCodemod(before, after)

    def test_multiline_load_with_comments_and_autograd_keep(self) -> None:
        before = """
            import torch


            class MyDiTNode:
                def __init__(self, path):
                    self.dit = (
                        diffusers.QwenImageTransformer2DModel.from_pretrained(  # the DiT
                            path,
                            subfolder="transformer",  # only this part
                        )
                        .to("cuda")
                    )

                @torch.inference_mode(False)
                def sample(self, x):
                    return self.dit(x)
        """
        after = f"""
            import torch
            from torch.utils.checkpoint import checkpoint


            class MyDiTNode:
                def __init__(self, path):
                    self.dit = (
                        diffusers.QwenImageTransformer2DModel.from_pretrained(  # the DiT
                            path,
                            subfolder="transformer",  # only this part
                        )
                        .to("cuda")
                    )
{ENABLE_SELF_DIT}
                @torch.inference_mode(False)
                def sample(self, x):
                    return checkpoint(self.dit, x, use_reentrant=False)
        """
        self.assertCodemod(before, after, autograd="keep")

    def test_same_name_in_another_class_is_not_the_model(self) -> None:
        before = """
            import torch


            class TextEncoderLoader:
                def load(self, path):
                    self.model = ChatGLMModel.from_pretrained(path)

                def encode(self, ids):
                    with torch.inference_mode(False):
                        return self.model(ids)


            class DiTSampler:
                def load(self, path):
                    self.model = QwenImageTransformer2DModel.from_pretrained(path)

                def sample(self, x):
                    with torch.inference_mode(False):
                        return self.model(x)
        """
        after = """
            import torch
            from torch.utils.checkpoint import checkpoint


            class TextEncoderLoader:
                def load(self, path):
                    self.model = ChatGLMModel.from_pretrained(path)

                def encode(self, ids):
                    with torch.inference_mode(False):
                        return self.model(ids)


            class DiTSampler:
                def load(self, path):
                    self.model = QwenImageTransformer2DModel.from_pretrained(path)

                def sample(self, x):
                    with torch.inference_mode(False):
                        return torch.no_grad()(checkpoint)(self.model, x, use_reentrant=False)
        """
        self.assertCodemod(before, after)

    def test_pipeline_is_left_but_its_transformer_called_by_the_node_is_wrapped(self) -> None:
        before = """
            import torch


            class PipeNode:
                def load(self, path):
                    self.pipe = QwenImagePipeline.from_pretrained(path)

                def run(self, prompt, latents, t):
                    image = self.pipe(prompt=prompt, num_inference_steps=20)
                    with torch.inference_mode(False):
                        noise = self.pipe.transformer(latents, t)
                        text = self.pipe.text_encoder(prompt)
                    return image, noise, text
        """
        after = """
            import torch
            from torch.utils.checkpoint import checkpoint


            class PipeNode:
                def load(self, path):
                    self.pipe = QwenImagePipeline.from_pretrained(path)

                def run(self, prompt, latents, t):
                    image = self.pipe(prompt=prompt, num_inference_steps=20)
                    with torch.inference_mode(False):
                        noise = torch.no_grad()(checkpoint)(self.pipe.transformer, latents, t, use_reentrant=False)
                        text = self.pipe.text_encoder(prompt)
                    return image, noise, text
        """  # noqa: E501
        self.assertCodemod(before, after)

    def test_calls_under_no_grad_or_inference_mode_and_the_vae_are_left(self) -> None:
        before = """
            import torch


            class Sampler:
                def load(self, path):
                    self.unet = UNet2DConditionModel.from_pretrained(path)
                    self.vae = AutoencoderKL.from_pretrained(path)

                @torch.inference_mode()
                def decode(self, z):
                    return self.unet(z)

                def run(self, z):
                    with torch.no_grad():
                        z = self.unet(z)
                    with torch.inference_mode(False):
                        z = self.unet(z)
                        return self.vae(z)
        """
        after = """
            import torch
            from torch.utils.checkpoint import checkpoint


            class Sampler:
                def load(self, path):
                    self.unet = UNet2DConditionModel.from_pretrained(path)
                    self.vae = AutoencoderKL.from_pretrained(path)

                @torch.inference_mode()
                def decode(self, z):
                    return self.unet(z)

                def run(self, z):
                    with torch.no_grad():
                        z = self.unet(z)
                    with torch.inference_mode(False):
                        z = torch.no_grad()(checkpoint)(self.unet, z, use_reentrant=False)
                        return self.vae(z)
        """
        self.assertCodemod(before, after)

    def test_helper_return_constructor_and_node_input(self) -> None:
        before = """
            import torch


            class Loader:
                def _load_dit(self, path):
                    dit = WanModel(dim=16)
                    dit.load_state_dict(torch.load(path))
                    return dit

                def load(self, path):
                    self.dit = self._load_dit(path)

                @torch.inference_mode(False)
                def run(self, x):
                    return self.dit(x)


            class Sampler:
                @classmethod
                def INPUT_TYPES(cls):
                    return {"required": {"transformer": ("WANVIDEOMODEL",), "steps": ("INT",)}}

                def sample(self, transformer, steps):
                    with torch.inference_mode(False):
                        return transformer(steps)
        """
        after = """
            import torch
            from torch.utils.checkpoint import checkpoint


            class Loader:
                def _load_dit(self, path):
                    dit = WanModel(dim=16)
                    dit.load_state_dict(torch.load(path))
                    return dit

                def load(self, path):
                    self.dit = self._load_dit(path)

                @torch.inference_mode(False)
                def run(self, x):
                    return torch.no_grad()(checkpoint)(self.dit, x, use_reentrant=False)


            class Sampler:
                @classmethod
                def INPUT_TYPES(cls):
                    return {"required": {"transformer": ("WANVIDEOMODEL",), "steps": ("INT",)}}

                def sample(self, transformer, steps):
                    with torch.inference_mode(False):
                        return torch.no_grad()(checkpoint)(transformer, steps, use_reentrant=False)
        """
        self.assertCodemod(before, after)

    def test_alias_under_torch_imported_as_th(self) -> None:
        before = """
            import torch as th


            class Node:
                def _load(self, path):
                    model = QwenImageModel.from_pretrained(path)
                    self.model = model

                @th.inference_mode(False)
                def run(self, x):
                    return self.model(x)
        """
        after = """
            import torch as th
            from torch.utils.checkpoint import checkpoint


            class Node:
                def _load(self, path):
                    model = QwenImageModel.from_pretrained(path)
                    self.model = model

                @th.inference_mode(False)
                def run(self, x):
                    return th.no_grad()(checkpoint)(self.model, x, use_reentrant=False)
        """
        self.assertCodemod(before, after)

    def test_torch_imported_where_autograd_off_needs_it(self) -> None:
        before = """
            from torch import inference_mode


            @inference_mode(False)
            def run(x):
                dit = QwenImageTransformer2DModel.from_pretrained("m")
                return dit(x)
        """
        after = """
            from torch import inference_mode
            from torch.utils.checkpoint import checkpoint
            import torch


            @inference_mode(False)
            def run(x):
                dit = QwenImageTransformer2DModel.from_pretrained("m")
                return torch.no_grad()(checkpoint)(dit, x, use_reentrant=False)
        """
        self.assertCodemod(before, after)

    def test_tokenizer_is_no_model(self) -> None:
        before = """
            import torch

            tokenizer = AutoTokenizer.from_pretrained("t")
            model = QwenImageModel.from_pretrained("m")
            with torch.inference_mode(False):
                out = model(**tokenizer("a cat", return_tensors="pt"))
        """
        after = """
            import torch
            from torch.utils.checkpoint import checkpoint

            tokenizer = AutoTokenizer.from_pretrained("t")
            model = QwenImageModel.from_pretrained("m")
            with torch.inference_mode(False):
                out = torch.no_grad()(checkpoint)(model, use_reentrant=False, **tokenizer("a cat", return_tensors="pt"))
        """  # noqa: E501
        self.assertCodemod(before, after)

    def test_own_switch_called_by_hand_is_kept(self) -> None:
        before = """
            import torch
            from torch.utils.checkpoint import checkpoint

            model = QwenImageModel.from_pretrained("m")
            model.enable_gradient_checkpointing()
            with torch.inference_mode(False):
                y = model(1)
        """
        after = """
            import torch
            from torch.utils.checkpoint import checkpoint

            model = QwenImageModel.from_pretrained("m")
            model.enable_gradient_checkpointing()
            with torch.inference_mode(False):
                y = checkpoint(model, 1, use_reentrant=False)
        """
        self.assertCodemod(before, after, autograd="keep")

    def test_already_patched_is_unchanged(self) -> None:
        patched = """
            import torch
            from torch.utils.checkpoint import checkpoint

            model = QwenImageModel.from_pretrained("m")
            enc = AutoModel.from_pretrained("e")
            with torch.inference_mode(False):
                y = checkpoint(model, 1, use_reentrant=False)
                z = torch.no_grad()(checkpoint)(model.forward, enc(2), use_reentrant=False)
        """
        self.assertCodemod(patched, patched)


class GradientCheckpointingCallTest(CodemodTest):
    TRANSFORM = GradientCheckpointing

    def test_keyword_only_call(self) -> None:
        before = """
            def run(self, x, t):
                return self.model(hidden_states=x, timestep=t)
        """
        after = """
            from torch.utils.checkpoint import checkpoint

            def run(self, x, t):
                return checkpoint(self.model, use_reentrant=False, hidden_states=x, timestep=t)
        """
        self.assertCodemod(before, after, models=["self.model"], autograd="keep")

    def test_star_args_and_kwargs_stay(self) -> None:
        before = """
            def run(self, x, *args, **kwargs):
                return self.model(x, *args, scale=2, **kwargs)
        """
        after = """
            from torch.utils.checkpoint import checkpoint

            def run(self, x, *args, **kwargs):
                return checkpoint(self.model, x, *args, use_reentrant=False, scale=2, **kwargs)
        """
        self.assertCodemod(before, after, models=["self.model"], autograd="keep")

    def test_forward_call_keeps_forward(self) -> None:
        before = """
            def run(self, x):
                return self.model.forward(x, t=1)
        """
        after = """
            from torch.utils.checkpoint import checkpoint

            def run(self, x):
                return checkpoint(self.model.forward, x, use_reentrant=False, t=1)
        """
        self.assertCodemod(before, after, models=["self.model"], autograd="keep")

    def test_subscript_attribute_and_tuple_unpacking_around_the_call(self) -> None:
        before = """
            def run(self, x):
                sample = self.model(x)[0].sample
                noise, aux = self.model(x)
                return sample, noise, aux
        """
        after = """
            from torch.utils.checkpoint import checkpoint

            def run(self, x):
                sample = checkpoint(self.model, x, use_reentrant=False)[0].sample
                noise, aux = checkpoint(self.model, x, use_reentrant=False)
                return sample, noise, aux
        """
        self.assertCodemod(before, after, models=["self.model"], autograd="keep")

    def test_calls_in_loops_conditionals_nested_functions_comprehensions(self) -> None:
        before = """
            def run(self, xs, steps):
                for i in range(steps):
                    if i % 2:
                        xs = self.model(xs)
                    else:
                        def step(x):
                            return self.model(x)
                        xs = step(xs)
                return [self.model(x) for x in xs], lambda: self.model()
        """
        after = """
            from torch.utils.checkpoint import checkpoint

            def run(self, xs, steps):
                for i in range(steps):
                    if i % 2:
                        xs = checkpoint(self.model, xs, use_reentrant=False)
                    else:
                        def step(x):
                            return checkpoint(self.model, x, use_reentrant=False)
                        xs = step(xs)
                return [checkpoint(self.model, x, use_reentrant=False) for x in xs], lambda: checkpoint(self.model, use_reentrant=False)
        """  # noqa: E501
        self.assertCodemod(before, after, models=["self.model"], autograd="keep")

    def test_one_argument_per_line_with_comments_and_trailing_comma(self) -> None:
        before = """
            def run(self, x, t):
                out = self.model(
                    x,  # latents
                    t,  # timestep
                )
                return self.model(
                    x,
                    t=t  # no trailing comma
                )
        """
        after = """
            from torch.utils.checkpoint import checkpoint

            def run(self, x, t):
                out = checkpoint(
                    self.model,
                    x,  # latents
                    t,  # timestep
                    use_reentrant=False,
                )
                return checkpoint(
                    self.model,
                    x,
                    use_reentrant=False,
                    t=t  # no trailing comma
                )
        """
        self.assertCodemod(before, after, models=["self.model"], autograd="keep")

    def test_existing_import_under_an_alias_is_reused(self) -> None:
        before = """
            from torch.utils.checkpoint import checkpoint as ckpt

            def run(self, x):
                return self.model(x)
        """
        after = """
            from torch.utils.checkpoint import checkpoint as ckpt

            def run(self, x):
                return ckpt(self.model, x, use_reentrant=False)
        """
        self.assertCodemod(before, after, models=["self.model"], autograd="keep")

    def test_existing_module_import_is_reused(self) -> None:
        before = """
            import torch.utils.checkpoint as cp

            def run(self, x):
                return self.model(x)
        """
        after = """
            import torch.utils.checkpoint as cp

            def run(self, x):
                return cp.checkpoint(self.model, x, use_reentrant=False)
        """
        self.assertCodemod(before, after, models=["self.model"], autograd="keep")

    def test_name_checkpoint_taken_by_a_weights_path(self) -> None:
        before = """
            import os

            def run(self, x, checkpoint="model.safetensors"):
                return self.model(x)
        """
        after = """
            import os
            from torch.utils.checkpoint import checkpoint as torch_checkpoint

            def run(self, x, checkpoint="model.safetensors"):
                return torch_checkpoint(self.model, x, use_reentrant=False)
        """
        self.assertCodemod(before, after, models=["self.model"], autograd="keep")

    def test_options_use_reentrant_and_preserve_rng_state(self) -> None:
        before = """
            def run(self, x):
                return self.model(x, t=0)
        """
        after = """
            from torch.utils.checkpoint import checkpoint

            def run(self, x):
                return checkpoint(self.model, x, use_reentrant=True, preserve_rng_state=False, t=0)
        """
        self.assertCodemod(
            before,
            after,
            models=["self.model"],
            use_reentrant=True,
            preserve_rng_state=False,
            autograd="keep",
        )

    def test_named_model_gets_enable_after_any_load_call(self) -> None:
        before = """
            class Node:
                def __init__(self):
                    self.net = load_net("weights.pt")

                def run(self, x):
                    return self.net(x)
        """
        after = """
            from torch.utils.checkpoint import checkpoint

            class Node:
                def __init__(self):
                    self.net = load_net("weights.pt")
                    try:  # qpatch: turn on the model's own gradient checkpointing; harmless where it has none
                        (getattr(self.net, "enable_gradient_checkpointing", None) or self.net.gradient_checkpointing_enable)()
                    except Exception:
                        [setattr(m, "gradient_checkpointing", True) for m in getattr(self.net, "modules", list)() if hasattr(m, "gradient_checkpointing")]

                def run(self, x):
                    return checkpoint(self.net, x, use_reentrant=False)
        """  # noqa: E501
        self.assertCodemod(before, after, models=["self.net"], autograd="keep")

    def test_call_passing_a_checkpoint_keyword_is_left(self) -> None:
        before = """
            from torch.utils.checkpoint import checkpoint

            def run(self, x):
                return self.model(x), self.model(x, debug=True)
        """
        after = """
            from torch.utils.checkpoint import checkpoint

            def run(self, x):
                return checkpoint(self.model, x, use_reentrant=False), self.model(x, debug=True)
        """
        self.assertCodemod(before, after, models=["self.model"], autograd="keep")

    def test_post_custom_forward_done_by_hand_is_not_wrapped_again(self) -> None:
        before = """
            from torch.utils.checkpoint import checkpoint

            class Node:
                def run(self, input_ids, pixel_values):
                    def custom_forward(*args, **kwargs):
                        return self.model(*args, **kwargs)
                    return checkpoint(custom_forward, input_ids, pixel_values, use_reentrant=False)
        """
        self.assertCodemod(before, before, models=["self.model"], autograd="keep")
