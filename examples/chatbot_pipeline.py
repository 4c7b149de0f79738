"""Using a ctxproto pipeline inside chatbot code.

Every turn, the whole conversation goes in; a lean prompt inside the budget comes
out, with the system prompt first and the current question last, so that the
prompt prefix repeats from turn to turn and prefix caches keep hitting.

    python examples/chatbot_pipeline.py
"""

from __future__ import annotations

from ctxproto import Budget, Context, Message, Pipeline, RecencyWindow

pipeline = Pipeline(
    [RecencyWindow(max_tokens=400)],
    Budget(max_prompt_tokens=800, context_window=8192, reserve_answer_tokens=200),
)

history: list[Message] = []
system = "You are a concise assistant for Lumen Home smart-home devices."
for question in [
    "My Hub 2 light is amber. What does that mean?",
    "It went white again. Can I pair bulbs now?",
    "How do I factory-reset a bulb?",
]:
    result = pipeline.run(
        Context(system_prompt=system, history=history, query=Message(role="user", content=question))
    )
    print(f"{question!r}: {result.original_tokens} -> {result.prompt_tokens} tokens")
    messages = result.prompt.messages if result.prompt else []  # send these to your model
    answer = "(the model's answer)"
    history += [Message(role="user", content=question), Message(role="assistant", content=answer)]
