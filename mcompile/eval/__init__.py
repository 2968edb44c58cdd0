"""The evaluation harness, an offline tool beside the runtime: accuracy of a plan against dense
(``evaluate``), needle-in-a-haystack (``niah``), ``mcompile eval`` (``cli``), and what the search,
the examples and the benchmarks share with it: model loading (``models``), texts and prompt
windows (``text``), plots of the benchmarks' results (``plots``), per-pattern recall from a
search's details (``pattern_recall``) and the benchmarks' synthetic models (``synthetic``).

It uses the backend only through ``torch.compile(..., backend="minference")`` and public names;
nothing the backend runs imports it.
"""
