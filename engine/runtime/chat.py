"""Chat prompts: a model's Jinja chat_template rendered as transformers does (jinja2 is
imported only here, on first use), or BitNet's plain "User: ...<|eot_id|>Assistant: "."""
import json
import time


def chat_prompt(tok, messages, add_generation_prompt: bool = True) -> str:
    """messages [{"role": "system"|"user"|"assistant", "content": str}] -> prompt text.
    A Jinja chat_template (config tokenizer.chat_template) is rendered as transformers
    does; otherwise (none, or not Jinja) BitNet's plain "User: ...<|eot_id|>Assistant: "."""
    template = tok.chat_template
    name = lambda i: tok.token_text(i) if i is not None else ""  # noqa: E731
    if template and ("{%" in template or "{{" in template):
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        def raise_exception(msg):
            raise ValueError(f"chat template: {msg}")

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.filters["tojson"] = lambda x, indent=None, **_: json.dumps(x, ensure_ascii=False, indent=indent)
        env.globals.update(raise_exception=raise_exception,
                           strftime_now=lambda fmt: time.strftime(fmt))
        return env.from_string(template).render(
            messages=messages, add_generation_prompt=add_generation_prompt,
            bos_token=name(tok.bos_id), eos_token=name(tok.eos_id))
    end = name(tok.eot_id) or name(tok.eos_id) or "\n"
    roles = {"system": "System", "user": "User", "assistant": "Assistant"}
    text = "".join(f"{roles.get(m['role'], m['role'].capitalize())}: {m['content']}{end}"
                   for m in messages)
    return text + ("Assistant: " if add_generation_prompt else "")
