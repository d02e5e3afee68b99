"""LLM calls: what is asked (`requests`), the backend interface (`backend`), the OpenAI-protocol
and offline backends, and the call slots shared across worker processes.

May import the standard library, openai, httpx2 and tenacity; never Dagster, pandas or the store."""
