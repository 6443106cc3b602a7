"""Golden before/after tests of `gradient-checkpointing`, one loader shape per test.

Call shapes name the model with the `models` option, so only the wrap and the import show;
load shapes let the codemod find the model itself and show the enable statement too.
"""

from __future__ import annotations

from libcst.codemod import CodemodTest

from qpatch.codemods.checkpoint import GradientCheckpointing


class GradientCheckpointingLoadTest(CodemodTest):
    TRANSFORM = GradientCheckpointing

    def test_standin_loader(self) -> None:
        before = """
            import torch


            class QwenImageLoader:
                def load(self, model_path, dtype):
                    self.model = QwenImageModel.from_pretrained(model_path, torch_dtype=dtype)
                    self.model.eval()
                    self.model.to(self.device)

                def run(self, input_ids, pixel_values, timestep):
                    output = self.model(input_ids, pixel_values, timestep)
                    return output
        """
        after = """
            import torch
            from torch.utils.checkpoint import checkpoint


            class QwenImageLoader:
                def load(self, model_path, dtype):
                    self.model = QwenImageModel.from_pretrained(model_path, torch_dtype=dtype)
                    try:  # qpatch: turn on the model's own gradient checkpointing; harmless where it has none
                        (getattr(self.model, "enable_gradient_checkpointing", None) or self.model.gradient_checkpointing_enable)()
                    except Exception:
                        [setattr(m, "gradient_checkpointing", True) for m in getattr(self.model, "modules", list)() if hasattr(m, "gradient_checkpointing")]
                    self.model.eval()
                    self.model.to(self.device)

                def run(self, input_ids, pixel_values, timestep):
                    output = checkpoint(self.model, input_ids, pixel_values, timestep, use_reentrant=False)
                    return output
        """  # noqa: E501
        self.assertCodemod(before, after)

    def test_other_class_and_attribute_multiline_load_with_comments(self) -> None:
        before = """
            class MyDiTNode:
                def __init__(self, path):
                    self.dit = (
                        diffusers.QwenImageTransformer2DModel.from_pretrained(  # the DiT
                            path,
                            subfolder="transformer",  # only this part
                        )
                        .to("cuda")
                    )

                def sample(self, x):
                    return self.dit(x)
        """
        after = """
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
                    try:  # qpatch: turn on the model's own gradient checkpointing; harmless where it has none
                        (getattr(self.dit, "enable_gradient_checkpointing", None) or self.dit.gradient_checkpointing_enable)()
                    except Exception:
                        [setattr(m, "gradient_checkpointing", True) for m in getattr(self.dit, "modules", list)() if hasattr(m, "gradient_checkpointing")]

                def sample(self, x):
                    return checkpoint(self.dit, x, use_reentrant=False)
        """  # noqa: E501
        self.assertCodemod(before, after)

    def test_module_level_model_called_in_a_function(self) -> None:
        before = """
            model = Model.from_pretrained("m")

            def run(x):
                return model(x)
        """
        after = """
            from torch.utils.checkpoint import checkpoint

            model = Model.from_pretrained("m")
            try:  # qpatch: turn on the model's own gradient checkpointing; harmless where it has none
                (getattr(model, "enable_gradient_checkpointing", None) or model.gradient_checkpointing_enable)()
            except Exception:
                [setattr(m, "gradient_checkpointing", True) for m in getattr(model, "modules", list)() if hasattr(m, "gradient_checkpointing")]

            def run(x):
                return checkpoint(model, x, use_reentrant=False)
        """  # noqa: E501
        self.assertCodemod(before, after)

    def test_loaded_in_a_helper_then_aliased(self) -> None:
        before = """
            class Node:
                def _load(self, path):
                    model = Model.from_pretrained(path)
                    self.model = model

                def run(self, x):
                    return self.model(x)
        """
        after = """
            from torch.utils.checkpoint import checkpoint

            class Node:
                def _load(self, path):
                    model = Model.from_pretrained(path)
                    try:  # qpatch: turn on the model's own gradient checkpointing; harmless where it has none
                        (getattr(model, "enable_gradient_checkpointing", None) or model.gradient_checkpointing_enable)()
                    except Exception:
                        [setattr(m, "gradient_checkpointing", True) for m in getattr(model, "modules", list)() if hasattr(m, "gradient_checkpointing")]
                    self.model = model

                def run(self, x):
                    return checkpoint(self.model, x, use_reentrant=False)
        """  # noqa: E501
        self.assertCodemod(before, after)

    def test_two_models_and_their_other_methods(self) -> None:
        before = """
            class Pipe:
                def load(self, p):
                    self.unet = UNet.from_pretrained(p); self.vae = VAE.from_pretrained(p)

                def run(self, z):
                    z = self.unet(z)
                    self.vae.to("cpu")
                    return self.vae.decode(z), self.vae(z)
        """
        after = """
            from torch.utils.checkpoint import checkpoint

            class Pipe:
                def load(self, p):
                    self.unet = UNet.from_pretrained(p); self.vae = VAE.from_pretrained(p)
                    try:  # qpatch: turn on the model's own gradient checkpointing; harmless where it has none
                        (getattr(self.unet, "enable_gradient_checkpointing", None) or self.unet.gradient_checkpointing_enable)()
                    except Exception:
                        [setattr(m, "gradient_checkpointing", True) for m in getattr(self.unet, "modules", list)() if hasattr(m, "gradient_checkpointing")]
                    try:  # qpatch: turn on the model's own gradient checkpointing; harmless where it has none
                        (getattr(self.vae, "enable_gradient_checkpointing", None) or self.vae.gradient_checkpointing_enable)()
                    except Exception:
                        [setattr(m, "gradient_checkpointing", True) for m in getattr(self.vae, "modules", list)() if hasattr(m, "gradient_checkpointing")]

                def run(self, z):
                    z = checkpoint(self.unet, z, use_reentrant=False)
                    self.vae.to("cpu")
                    return self.vae.decode(z), checkpoint(self.vae, z, use_reentrant=False)
        """  # noqa: E501
        self.assertCodemod(before, after)

    def test_tokenizer_is_no_model(self) -> None:
        before = """
            tokenizer = AutoTokenizer.from_pretrained("t")
            model = Model.from_pretrained("m")
            out = model(**tokenizer("a cat", return_tensors="pt"))
        """
        after = """
            from torch.utils.checkpoint import checkpoint

            tokenizer = AutoTokenizer.from_pretrained("t")
            model = Model.from_pretrained("m")
            try:  # qpatch: turn on the model's own gradient checkpointing; harmless where it has none
                (getattr(model, "enable_gradient_checkpointing", None) or model.gradient_checkpointing_enable)()
            except Exception:
                [setattr(m, "gradient_checkpointing", True) for m in getattr(model, "modules", list)() if hasattr(m, "gradient_checkpointing")]
            out = checkpoint(model, use_reentrant=False, **tokenizer("a cat", return_tensors="pt"))
        """  # noqa: E501
        self.assertCodemod(before, after)

    def test_own_switch_called_by_hand_is_kept(self) -> None:
        before = """
            from torch.utils.checkpoint import checkpoint

            model = Model.from_pretrained("m")
            model.enable_gradient_checkpointing()
            y = model(1)
        """
        after = """
            from torch.utils.checkpoint import checkpoint

            model = Model.from_pretrained("m")
            model.enable_gradient_checkpointing()
            y = checkpoint(model, 1, use_reentrant=False)
        """
        self.assertCodemod(before, after)

    def test_already_patched_is_unchanged(self) -> None:
        patched = """
            from torch.utils.checkpoint import checkpoint

            model = Model.from_pretrained("m")
            try:  # qpatch: turn on the model's own gradient checkpointing; harmless where it has none
                (getattr(model, "enable_gradient_checkpointing", None) or model.gradient_checkpointing_enable)()
            except Exception:
                [setattr(m, "gradient_checkpointing", True) for m in getattr(model, "modules", list)() if hasattr(m, "gradient_checkpointing")]
            y = checkpoint(model, 1, use_reentrant=False)
            z = checkpoint(model.forward, 2, use_reentrant=False)
        """  # noqa: E501
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
        self.assertCodemod(before, after, models=["self.model"])

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
        self.assertCodemod(before, after, models=["self.model"])

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
        self.assertCodemod(before, after, models=["self.model"])

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
        self.assertCodemod(before, after, models=["self.model"])

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
        self.assertCodemod(before, after, models=["self.model"])

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
        self.assertCodemod(before, after, models=["self.model"])

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
        self.assertCodemod(before, after, models=["self.model"])

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
        self.assertCodemod(before, after, models=["self.model"])

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
        self.assertCodemod(before, after, models=["self.model"])

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
            before, after, models=["self.model"], use_reentrant=True, preserve_rng_state=False
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
        self.assertCodemod(before, after, models=["self.net"])

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
        self.assertCodemod(before, after, models=["self.model"])

    def test_post_custom_forward_done_by_hand_is_not_wrapped_again(self) -> None:
        before = """
            from torch.utils.checkpoint import checkpoint

            class Node:
                def run(self, input_ids, pixel_values):
                    def custom_forward(*args, **kwargs):
                        return self.model(*args, **kwargs)
                    return checkpoint(custom_forward, input_ids, pixel_values, use_reentrant=False)
        """
        self.assertCodemod(before, before, models=["self.model"])
