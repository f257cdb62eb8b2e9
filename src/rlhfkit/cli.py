"""`rlhfkit <command> [--flags | --config file.yaml]` — a thin dispatch; every flag comes from a config dataclass."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path

from rlhfkit import config as C
from rlhfkit.errors import UsageError

# command -> (config dataclass, "module:function" that runs it, one-line description)
STAGES: dict[str, tuple[type, str, str]] = {
    "pretrain": (
        C.PretrainConfig,
        "rlhfkit.stages.pretrain:run",
        "Step0: pretrain a language model on raw text",
    ),
    "sft": (C.SFTConfig, "rlhfkit.stages.sft:run", "Step1: supervised fine-tuning on demonstrations"),
    "label": (
        C.LabelConfig,
        "rlhfkit.stages.label:run",
        "Step2 data: sample K answers per prompt, rank them",
    ),
    "reward": (C.RewardConfig, "rlhfkit.stages.reward:run", "Step2: reward model on K-wise rankings"),
    "ppo": (C.PPOConfig, "rlhfkit.stages.ppo:run", "Step3: PPO / PPO-ptx (--ptx-coef) / RLOO (--algo rloo)"),
    "dpo": (
        C.DPOConfig,
        "rlhfkit.stages.dpo:run",
        "DPO: the comparisons as the loss, without a reward model or RL",
    ),
    "eval": (
        C.EvalConfig,
        "rlhfkit.evaluate:run",
        "win rates vs SFT judged by the held-out panel, report + figures",
    ),
}


@dataclass
class ChatArgs(C.Settings):
    model: str = C.arg("runs/sft", "model directory")
    chat: bool | None = C.arg(
        None, "format with the chat template (default: yes unless the model is pretrained-only)"
    )
    max_new_tokens: int = C.arg(96, "maximum answer length in tokens")
    max_prompt_length: int | None = C.arg(None, C.MAX_PROMPT_LENGTH_HELP)
    temperature: float = C.arg(0.7, "sampling temperature (0 = greedy)")
    top_p: float = C.arg(0.9, "nucleus sampling mass")
    seed: int = C.arg(0, "sampling seed")


@dataclass
class GenerateArgs(ChatArgs):
    prompt: list[str] = C.arg(None, "one or more prompts")
    prompts_file: str | None = C.arg(None, "a {'prompt'} JSONL file instead of --prompt")
    num_samples: int = C.arg(1, "answers per prompt")
    best_of_n: int = C.arg(1, "sample n answers and keep the reward model's favourite (needs --reward-model)")
    reward_model: str | None = C.arg(None, "reward model for --best-of-n")


def _load_function(path: str):
    module, name = path.split(":")
    return getattr(importlib.import_module(module), name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="rlhfkit", description="ChatGPT-style RLHF: Step0 → Step1 → Step2 → Step3"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (cls, _, description) in STAGES.items():
        stage = sub.add_parser(name, help=description, description=description)
        C.add_arguments(stage, cls)
        C.add_preset_argument(stage)
    gen = sub.add_parser(
        "generate",
        help="sample answers from a model",
        description="Sample answers to --prompt TEXT or a --prompts-file, optionally best-of-n by a reward model.",
    )
    C.add_arguments(gen, GenerateArgs)
    chat = sub.add_parser(
        "chat",
        help="talk to a model interactively",
        description="Talk to a model, one prompt per line (each answered on its own: no history is kept).",
    )
    C.add_arguments(chat, ChatArgs)
    pipe = sub.add_parser(
        "pipeline",
        help="Step0 → Step3 and the evaluation on the embedded world, one command",
        description="Pretrain, SFT, label, reward model, PPO / PPO-ptx (and DPO, best-of-n), then the evaluation "
        "report, on the embedded world: no data or downloads needed. --resume skips finished steps.",
    )
    C.add_arguments(pipe, C.PipelineConfig)
    score = sub.add_parser(
        "score",
        help="reward of one or more responses to a prompt",
        description="Score --response TEXT [TEXT ...] to --prompt TEXT with a trained reward model.",
    )
    C.add_arguments(score, C.ScoreArgs)
    world = sub.add_parser(
        "world", help="the embedded world (data + judge)", description="The embedded world's data and judge."
    )
    world_sub = world.add_subparsers(dest="world_command", required=True)
    export = world_sub.add_parser("export", help="write the world's data as JSONL")
    export.add_argument("--out", default="runs/world", help="output directory")
    export.add_argument("--seed", type=int, default=0, help="world seed")
    export.add_argument(
        "--docs",
        type=int,
        default=None,
        help="pretraining documents (default 20000; held-out text avoids them)",
    )
    from rlhfkit.labelserver.cli import add_parser as add_label_server

    add_label_server(sub)
    debug_help = "print the traceback of an error (also RLHFKIT_DEBUG=1)"
    parser.add_argument("--debug", action="store_true", help=debug_help)
    for command in _commands(sub):
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=debug_help)
    args = parser.parse_args(argv)
    debug = args.debug or os.environ.get("RLHFKIT_DEBUG", "") not in ("", "0")
    if args.command != "label-server":  # a web server: no torch to load (its `tasks add` quiets them itself)
        from rlhfkit.training import quiet_libraries

        quiet_libraries()
    try:
        _dispatch(args, argv)
    except KeyboardInterrupt:
        from rlhfkit.console import console

        console.quiet = False
        console.print(
            "interrupted — checkpoints already written are kept; run the same command with --resume to continue"
        )
        return 130
    except Exception as err:
        if debug:
            raise
        return _report(err)
    return 0


def _dispatch(args: argparse.Namespace, argv: list[str] | None) -> None:
    """Run the command, holding the lock on the directory it writes (one writer per --out at a time)."""
    from rlhfkit.rundir import locked

    command = "rlhfkit " + " ".join(sys.argv[1:] if argv is None else argv)
    if args.command in STAGES:
        cls, target, _ = STAGES[args.command]
        cfg = C.from_args(cls, args, step=args.command)
        file, replaced = args.command == "label", args.command not in ("label", "eval")
        with _lock(locked, cfg.out, command, is_file=file, replaced=replaced):
            _load_function(target)(cfg)
    elif args.command == "generate":
        _generate(C.from_args(GenerateArgs, args))
    elif args.command == "chat":
        _chat(C.from_args(ChatArgs, args))
    elif args.command == "pipeline":
        from rlhfkit import pipeline

        cfg, sections = pipeline.from_namespace(args)
        with _lock(locked, None if cfg.print_config else cfg.out, command):
            pipeline.run(cfg, sections)
    elif args.command == "score":
        _score(C.from_args(C.ScoreArgs, args))
    elif args.command == "label-server":
        from rlhfkit.labelserver.cli import main as label_server

        label_server(args, command)  # it locks what it writes (export's --out; the database is SQLite's)
    elif args.command == "world":
        from rlhfkit.world import export_world

        if args.seed != 0:
            print(
                f"warning: --seed {args.seed} draws other prompt splits than the seed-0 ones that `eval "
                "--prompts world` and the pipeline use: some of these SFT/RM/RL prompts are in that eval "
                "split, so do not evaluate models trained on this export with `--prompts world`",
                file=sys.stderr,
            )
        docs = {} if args.docs is None else {"n_docs": args.docs}
        with _lock(locked, args.out, command):
            counts = export_world(args.out, seed=args.seed, **docs)
        for name, n in counts.items():
            print(f"{args.out}/{name}: {n} rows")


def _commands(sub) -> list[argparse.ArgumentParser]:
    """Every command's parser, the verbs of a command with verbs too (`label-server tasks add`)."""
    found = []
    for parser in sub.choices.values():
        found.append(parser)
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                found += _commands(action)
    return found


def _lock(locked, out: str | None, command: str, **kind):
    """The lock on `out`, taken by the first process only: under torchrun / accelerate launch every process runs
    this command on the same --out."""
    if out is None or int(os.environ.get("RANK", "0")) > 0:
        return contextlib.nullcontext()
    return locked(out, command, **kind)


def _report(err: Exception) -> int:
    """One line for an error: exit 2 for the user's input, 1 for a failed run (with where a library raised it)."""
    from rlhfkit.console import console
    from rlhfkit.errors import RunError, UsageError

    console.quiet = False  # every process reports its own error
    console.print("error:", style="bold red", end=" ")
    if isinstance(err, (UsageError, RunError)):
        message = str(err)
    else:  # a bug or a library's failure: what, and where, so it can be reported; --debug has the traceback
        message = f"the run failed: {type(err).__name__}: {_first_line(err)} ({_where(err)}); --debug shows the traceback"
    console.print(message, soft_wrap=True)  # one line, whatever the width: a log can be grepped for it
    return 2 if isinstance(err, UsageError) else 1


def _first_line(err: Exception) -> str:
    lines = [line for line in str(err).splitlines() if line.strip()]
    return lines[0].strip() if lines else "(no message)"


def _where(err: Exception) -> str:
    """The frame that raised `err`, and the last of rlhfkit's own frames on the way there."""
    frames = traceback.extract_tb(err.__traceback__)
    if not frames:
        return "no traceback"
    raised = frames[-1]
    where = f"raised at {_short(raised.filename)}:{raised.lineno} in {raised.name}"
    ours = [f for f in frames if f"{os.sep}rlhfkit{os.sep}" in f.filename]
    if ours and ours[-1] is not raised:
        where += f", from {_short(ours[-1].filename)}:{ours[-1].lineno} in {ours[-1].name}"
    return where


def _short(filename: str) -> str:
    """A path from its package on (torch/nn/functional.py, rlhfkit/stages/lm.py), not the whole site-packages."""
    parts = Path(filename).parts
    for anchor in ("site-packages", "src"):
        if anchor in parts:
            return "/".join(parts[parts.index(anchor) + 1 :])
    return filename


def _load_for_generation(args: ChatArgs):
    from rlhfkit.modeling import check_vocab, for_inference, is_chat_model, load_causal_lm
    from rlhfkit.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(args.model)
    model = for_inference(load_causal_lm(args.model))
    check_vocab(model, tokenizer, args.model)
    chat = is_chat_model(args.model) if args.chat is None else args.chat
    return model, tokenizer, chat


def _generate(args: GenerateArgs) -> None:
    from rlhfkit.rollout import generate_answers

    prompts = list(args.prompt or [])
    if not prompts and not args.prompts_file:
        raise UsageError("give --prompt TEXT (one or more) or --prompts-file FILE.jsonl")
    model, tokenizer, chat = _load_for_generation(args)
    if args.prompts_file:
        from rlhfkit.data import load_prompts
        from rlhfkit.tokenizer import control_tokens

        rows = load_prompts(args.prompts_file, control_tokens(tokenizer))
        prompts += [p.context for p in rows]  # a conversation whole
    from rlhfkit.batching import fit_prompts
    from rlhfkit.modeling import context_length

    prompts = fit_prompts(
        tokenizer,
        prompts,
        chat,
        args.max_prompt_length,
        args.max_new_tokens,
        context_length(model),
        "generate",
    )
    repeated = [p for p in prompts for _ in range(args.num_samples)]
    if args.best_of_n > 1:
        from rlhfkit.ensemble import load_judge
        from rlhfkit.evaluate import best_of_n
        from rlhfkit.modeling import check_vocab, for_inference

        if not args.reward_model:
            raise UsageError("generate --best-of-n needs --reward-model DIR")
        reward_model = for_inference(load_judge(args.reward_model, tokenizer.pad_token_id))
        check_vocab(
            reward_model, tokenizer, f"generate --reward-model {args.reward_model}", args.reward_model
        )
        answers = best_of_n(
            model,
            reward_model,
            tokenizer,
            repeated,
            args.best_of_n,
            chat,
            args.max_new_tokens,
            args.temperature,
            args.top_p,
            args.seed,
        )
    else:
        answers = generate_answers(
            model,
            tokenizer,
            repeated,
            chat,
            args.max_new_tokens,
            args.temperature,
            args.top_p,
            args.seed,
            max_prompt_length=args.max_prompt_length,
        )
    for prompt, (answer, ended) in zip(repeated, answers):
        asked = prompt if isinstance(prompt, str) else prompt[-1]["content"]  # a conversation's last turn
        print(f"> {asked}\n{answer}{'' if ended else ' …[no EOS]'}\n")


def _score(args: C.ScoreArgs) -> None:
    from rlhfkit.batching import score_responses
    from rlhfkit.ensemble import RewardEnsemble, load_judge
    from rlhfkit.modeling import check_vocab, for_inference
    from rlhfkit.tokenizer import load_tokenizer

    if not args.prompt or not args.response:
        raise UsageError("give --prompt TEXT and --response TEXT [TEXT ...]")
    tokenizer = load_tokenizer(args.reward_model)
    model = for_inference(
        load_judge(args.reward_model, tokenizer.pad_token_id, args.ensemble_reduce, args.ensemble_lambda)
    )
    check_vocab(model, tokenizer, args.reward_model)
    prompts = [args.prompt] * len(args.response)
    rewards = score_responses(model, tokenizer, prompts, args.response)
    if not isinstance(model, RewardEnsemble):
        for response, reward in zip(args.response, rewards.tolist()):
            print(f"{reward:+.3f}  {response}")
        return
    # Each member in its own units, (r + bias) / std (`score_responses` adds the bias), then the combined reward.
    each = [
        score_responses(member, tokenizer, prompts, args.response) / scale
        for member, (_, scale) in zip(model.members, model.units)
    ]
    print(f"{model.describe()}; each member's score is (r + bias) / std")
    for i, (response, reward) in enumerate(zip(args.response, rewards.tolist())):
        print(f"{reward:+.3f}  [{' '.join(f'{s[i].item():+.3f}' for s in each)}]  {response}")


def _chat(args: ChatArgs) -> None:
    from rlhfkit.rollout import generate_answers

    model, tokenizer, chat = _load_for_generation(args)
    print("rlhfkit chat — an empty line or Ctrl-D quits")
    seed = args.seed
    while True:
        try:
            prompt = input("你: ").strip()
        except EOFError:
            break
        if not prompt:
            break
        ((answer, ended),) = generate_answers(
            model,
            tokenizer,
            [prompt],
            chat,
            args.max_new_tokens,
            args.temperature,
            args.top_p,
            seed,
            max_prompt_length=args.max_prompt_length,
            stage="chat",
        )
        seed += 1
        print(f"模型: {answer}{'' if ended else ' …'}")


if __name__ == "__main__":
    sys.exit(main())
