"""Text generation with a trained model of a text task (math programs, corpora): ``puma sample``.

The prompt is encoded the way the task encodes prompts (a math question is followed by
``<sep>``); ``length`` masked positions follow it, and the sampler fills them in. The result is
the text up to the first ``<eos>`` after the prompt. With ``show_steps`` the partly decoded
sequence is kept after every network call (masked tokens shown as ``▒``, ``<eos>`` as nothing),
rebuilt from the decode order: a revealed token never changes afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from puma_mdm.errors import PumaError
from puma_mdm.kinds import sample
from puma_mdm.sampling import check_sampling_args, is_adaptive
from puma_mdm.tasks.tokenized import TokenizedTask


class SampleError(PumaError):
    """A sampling request that cannot be carried out."""


@dataclass
class Generation:
    text: str  # prompt and completion, as text (``<sep>`` shown as a line break)
    completion: str  # what the model wrote after the prompt, cut at the first <eos>
    nfe: int  # network calls until this sequence was complete
    steps: list[str] = field(default_factory=list)  # the sequence after each call


def layout(task: TokenizedTask, prompt: str | None, length: int | None, seq_len: int):
    """(prompt ids, number of positions to generate), checked against the model's length."""
    if task.needs_prompt and not prompt:
        raise SampleError(f"a {task.name!r} model completes a prompt: give --prompt TEXT")
    ids = task.prompt_ids(prompt) if prompt else []
    room = seq_len - len(ids)
    if room < 1:
        raise SampleError(
            f"the prompt is {len(ids)} tokens, but the model's sequences hold {seq_len}: "
            "nothing is left to generate; shorten the prompt"
        )
    length = room if length is None else length
    if length < 1:
        raise SampleError(f"--length must be ≥ 1, got {length}")
    if length > room:
        raise SampleError(
            f"--length {length} after the {len(ids)}-token prompt makes {len(ids) + length} "
            f"tokens, more than the model's sequence length {seq_len}; use --length ≤ {room}"
        )
    return ids, length


@torch.no_grad()
def generate(
    model: torch.nn.Module,
    task: TokenizedTask,
    prompt: str | None = None,
    length: int | None = None,
    n: int = 1,
    policy: str = "margin",
    k: int | None = 1,
    threshold: float | None = None,
    temperature: float = 0.0,
    seed: int = 0,
    show_steps: bool = False,
    entropy_bound: float | None = None,
    cache: str = "auto",
    refresh: int = 4,
    entropy_sum: float | None = None,
) -> list[Generation]:
    """``n`` completions of ``prompt`` (unconditional text when None), ``length`` tokens each
    (default: up to the model's sequence length); ``entropy_bound``, ``entropy_sum``, ``cache``
    and ``refresh`` as in :func:`~puma_mdm.kinds.sample`."""
    parallel = is_adaptive(threshold, entropy_bound, entropy_sum)
    try:
        check_sampling_args(
            policy,
            None if parallel else k,
            None,
            threshold,
            temperature,
            entropy_bound,
            entropy_sum,
        )
    except ValueError as err:
        raise SampleError(str(err)) from None
    if n < 1:
        raise SampleError(f"--n must be ≥ 1, got {n}")
    ids, length = layout(task, prompt, length, model.cfg.seq_len)
    x_t = torch.tensor([ids + [task.mask_id] * length] * n)
    result = sample(
        model,
        x_t,
        task.mask_id,
        policy=policy,
        k=None if parallel else k,
        threshold=threshold,
        entropy_bound=entropy_bound,
        entropy_sum=entropy_sum,
        temperature=temperature,
        generator=torch.Generator().manual_seed(seed),
        record_order=True,
        eos_id=task.eos_id,
        cache=cache,
        refresh=refresh,
    )
    prompt_mask = torch.arange(x_t.shape[1]) < len(ids)
    out = []
    for row, order in zip(result.tokens, result.order, strict=True):
        nfe = int(order.max()) + 1
        steps = [task.show_partial(row.tolist(), (order > s).tolist()) for s in range(nfe)]
        out.append(
            Generation(
                text=task.text_of(row.tolist()),
                completion=task.completion(row, prompt_mask),
                nfe=nfe,
                steps=steps if show_steps else [],
            )
        )
    return out
