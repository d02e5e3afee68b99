"""Shared pytest setup: the fake OpenAI-compatible server fixture (`openai_server`)."""

pytest_plugins = ["tests.openai_server"]
