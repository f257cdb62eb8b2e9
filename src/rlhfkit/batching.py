"""Text to token ids to padded tensors, and a reward model's score of them: what the stages share below their loops.

    encode   chat(prompt) + response (+ end of turn), the text the reward model, DPO and PPO see; prompts for
             sampling, an over-long one shortened in its text so that the template's tokens stay
    pad      rows of ids as one tensor: right-padded for training and scoring, left-padded for sampling
    pack     pretraining text cut into full blocks (Step0, PPO-ptx, the eval's perplexity)
    score    r(x, y) of (prompt, response) pairs, with the reward model's demonstration-mean shift

Nothing here trains or samples; every stage imports it, and it imports no stage.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rlhfkit.console import console
from rlhfkit.data import Ranked
from rlhfkit.errors import UsageError
from rlhfkit.modeling import context_length, last_token_scores
from rlhfkit.tokenizer import end_of_turn_id, format_prompt

# ---------------------------------------------------------------------------------------------------------------
# Encode


def encode_prompt(tokenizer, prompt: str | list[dict]) -> list[int]:
    """Token ids of chat(prompt); `prompt` may be a whole conversation (`Ranked.context`)."""
    return tokenizer(format_prompt(tokenizer, prompt), add_special_tokens=False)["input_ids"]


def encode_response(tokenizer, prompt_ids: list[int], response: str, ended: bool, max_len: int) -> list[int]:
    """chat(prompt) + response (+ the end-of-turn token when the answer ended): the same text PPO scores. The prompt comes encoded
    (`encode_prompt`), once for all of its K responses: rendering the chat template is the slow part."""
    response_ids = tokenizer(response, add_special_tokens=False)["input_ids"]
    ids = prompt_ids + response_ids + ([end_of_turn_id(tokenizer)] if ended else [])
    return ids[-max_len:] if len(ids) > max_len else ids


def encode_rows(
    tokenizer, prompts: list, responses: list[str], ended: list[bool], max_len: int
) -> list[list[int]]:
    """`encode_response` of each (prompt, response, ended); a prompt repeating the one before it (the K responses
    of a ranking, the n samples of best-of-n) reuses its ids instead of rendering the chat template again."""
    rows, previous, prompt_ids = [], None, []
    for prompt, response, e in zip(prompts, responses, ended):
        if prompt != previous:
            previous, prompt_ids = prompt, encode_prompt(tokenizer, prompt)
        rows.append(encode_response(tokenizer, prompt_ids, response, e, max_len))
    return rows


def encode_items(tokenizer, items: list[Ranked], max_len: int) -> list[list[int]]:
    """`encode_rows` of every response of every item, item by item, in the order of its responses."""
    return encode_rows(
        tokenizer,
        [item.context for item in items for _ in item.responses],
        [response for item in items for response in item.responses],
        [e for item in items for e in item.ended or [True] * len(item.responses)],
        max_len,
    )


def encode_prompts(tokenizer, prompts: list, chat: bool) -> list[list[int]]:
    """Token ids of each formatted prompt, to sample from, whole (`fit_prompts` shortens them beforehand)."""
    texts = [format_prompt(tokenizer, p, chat) for p in prompts]
    return tokenizer(texts, add_special_tokens=False)["input_ids"]


def fit_prompts(
    tokenizer,
    prompts: list,
    chat: bool,
    max_prompt_length: int | None,
    max_new_tokens: int,
    context: int | None,
    stage: str,
) -> list:
    """The prompts a sampling stage samples from, each at most `max_prompt_length` tokens once formatted (TRL's
    max_prompt_length; None = the longest prompt's length, capped so that prompt + answer fit the model's
    `context`). A longer one loses the start of its earliest text — a conversation its oldest turns' words
    first, never the chat template's tokens (role markers, the generation prompt) — and the stage says how many."""
    if not prompts:
        return prompts
    lengths = [len(ids) for ids in encode_prompts(tokenizer, prompts, chat)]
    room = context - max_new_tokens if context else None
    if room is not None and room < 1:
        raise UsageError(
            f"[{stage}] --max-new-tokens {max_new_tokens} leaves no room for a prompt in the model's context of "
            f"{context} tokens; give a smaller --max-new-tokens"
        )
    if max_prompt_length is None:
        limit = max(lengths) if room is None else min(max(lengths), room)
        flag = (
            f"--max-prompt-length (default: the longest prompt, within the model's {context}-token context)"
        )
    else:
        if room is not None and max_prompt_length > room:
            raise UsageError(
                f"[{stage}] --max-prompt-length {max_prompt_length} + --max-new-tokens {max_new_tokens} is more than "
                f"the model's context of {context} tokens; give a --max-prompt-length of at most {room}"
            )
        limit, flag = max_prompt_length, f"--max-prompt-length {max_prompt_length}"
    long = [i for i, n in enumerate(lengths) if n > limit]
    if not long:
        return prompts
    fitted = list(prompts)
    for i in long:
        fitted[i] = shorten_prompt(tokenizer, prompts[i], chat, limit, stage)
    console.print(
        f"[{stage}] {len(long)} of {len(prompts)} prompts are longer than {flag}: {limit} tokens; each loses the "
        f"start of its earliest text (the chat template's tokens are kept; the first is prompt {long[0] + 1}, "
        f"{lengths[long[0]]} tokens)"
    )
    return fitted


def shorten_prompt(tokenizer, prompt, chat: bool, limit: int, stage: str):
    """`prompt` (text or conversation) with words cut from the start of its earliest text until its formatted ids
    fit `limit` tokens; the template is rendered again each time, so its own tokens are never cut."""
    messages = (
        [dict(m) for m in prompt] if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
    )
    for _ in range(8 * len(messages) + 8):  # each pass empties a message or fits (token boundaries can shift)
        as_prompt = messages if isinstance(prompt, list) else messages[0]["content"]
        excess = len(encode_prompts(tokenizer, [as_prompt], chat)[0]) - limit
        if excess <= 0:
            return as_prompt
        first = next((m for m in messages if m["content"]), None)
        if first is None:
            break
        ids = tokenizer(first["content"], add_special_tokens=False)["input_ids"]
        first["content"] = tokenizer.decode(ids[excess:]).lstrip("\ufffd") if excess < len(ids) else ""
    raise UsageError(
        f"[{stage}] the chat template's own tokens alone are more than --max-prompt-length {limit}; give a "
        "larger --max-prompt-length"
    )


def check_conversations(tokenizer, items: list[Ranked], where: str) -> None:
    """A prompt given as a conversation needs the tokenizer's chat template: say so before any training step."""
    rows = [n for n, item in enumerate(items, 1) if item.prompt_messages]
    if rows and not tokenizer.chat_template:
        raise UsageError(
            f"{where}: {len(rows)} rows give the prompt as a conversation (the first is ranking {rows[0]}), but "
            f"the tokenizer of {tokenizer.name_or_path} has no chat template; give plain-text prompts, or add a "
            "chat_template to the tokenizer"
        )


def warn_if_cut(stage: str, n_cut: int, n_responses: int, max_len: int, limit: str = "") -> None:
    """The warning of a stage that cut `n_cut` rows to their last `max_len` tokens (reward, DPO, scoring);
    `limit` names the bound (default: the --max-len setting)."""
    if n_cut:
        console.print(
            f"[{stage}] warning: {n_cut} of {n_responses} responses are longer than {limit or f'--max-len {max_len}'} "
            f"with their prompt; they keep their last {max_len} tokens (the prompt's start is cut)"
        )


# ---------------------------------------------------------------------------------------------------------------
# Pad


def pad(rows: list[list[int]], pad_value: int, left: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of ids as one (B, T) tensor, T the longest row, and its attention mask (1 on real tokens). Right-padded
    for training and scoring; left-padded (`left`) for sampling, so that every answer starts at column T."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_value, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            columns = slice(width - len(r), width) if left else slice(0, len(r))
            ids[i, columns] = torch.tensor(r)
            mask[i, columns] = 1
    return ids, mask


@dataclass
class LMExample:
    input_ids: list[int]
    labels: list[int]  # -100 where no loss is taken


def collate(examples: list[LMExample], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest example of the batch (padding trimmed, not to max_len); padded labels are -100."""
    input_ids, attention_mask = pad([e.input_ids for e in examples], pad_id)
    labels, _ = pad([e.labels for e in examples], -100)
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}


# ---------------------------------------------------------------------------------------------------------------
# Pack


def token_stream(texts: list[str], tokenizer) -> list[int]:
    """The documents' tokens end to end, each followed by EOS."""
    stream: list[int] = []
    for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]:
        stream.extend(ids)
        stream.append(tokenizer.eos_token_id)
    return stream


def pack(
    texts: list[str],
    tokenizer,
    block: int,
    source: str = "the pretraining data",
    whole_if_short: bool = False,
) -> list[LMExample]:
    """Concatenate documents, each followed by EOS, and cut the stream into full blocks (a shorter tail is left
    out). A stream shorter than one block is an error, or with `whole_if_short` one block of all of it."""
    stream = token_stream(texts, tokenizer)
    if whole_if_short and 2 <= len(stream) < block:
        block = len(stream)
    n = len(stream) // block
    if n == 0:
        if whole_if_short:  # 0 or 1 token: nothing to predict
            raise UsageError(f"{source}: {len(stream)} tokens, too few to measure on; give more text")
        raise UsageError(
            f"{source}: {len(stream)} tokens, fewer than one block of {block} (--max-len); "
            "give more text or a smaller --max-len"
        )
    return [
        LMExample(stream[i * block : (i + 1) * block], stream[i * block : (i + 1) * block]) for i in range(n)
    ]


# ---------------------------------------------------------------------------------------------------------------
# Score


@torch.no_grad()
def score_responses(
    model,
    tokenizer,
    prompts: list,
    responses: list[str],
    ended: list[bool] | None = None,
    max_len: int | None = None,
    batch_size: int = 64,
) -> torch.Tensor:
    """r(x, y) for each (prompt, response), including the stored demonstration-mean shift. (N,)

    A row longer than `max_len` tokens (None: the model's context) keeps its last `max_len`, where the score is
    read; how many were cut is said once per process and length (a judge scores one pair at a time)."""
    ended = ended if ended is not None else [True] * len(prompts)
    max_len = max_len or context_length(model) or 1 << 30
    device = next(model.parameters()).device
    out, n_cut = [], 0
    for i in range(0, len(prompts), batch_size):
        batch = slice(i, i + batch_size)
        rows = encode_rows(tokenizer, prompts[batch], responses[batch], ended[batch], max_len + 1)
        n_cut += sum(len(r) > max_len for r in rows)
        ids, mask = pad([r[-max_len:] for r in rows], tokenizer.pad_token_id)
        out.append(last_token_scores(model, ids.to(device), mask.to(device)).float().cpu())
    if n_cut and max_len not in _SAID_CUT:
        _SAID_CUT.add(max_len)
        warn_if_cut("score", n_cut, len(prompts), max_len, f"the reward model's context of {max_len} tokens")
    return torch.cat(out) + float(getattr(model.config, "reward_bias", 0.0) or 0.0)


_SAID_CUT: set[int] = set()  # the lengths `score_responses` has already warned of


# Below this spread on the centring answers the reward model barely tells answers apart, and PPO's rewards,
# divided by it, grow by 1/std: both deserve a word.
NARROW_REWARD_STD = 0.05


def narrow_rewards(std: float) -> str:
    return (
        f"the reward model's scores of the centring answers spread by only {std:.4f}, so it barely tells answers "
        f"apart; PPO divides rewards by that spread (×{1 / max(std, 1e-12):.0f}) unless given --no-scale-rewards"
    )
