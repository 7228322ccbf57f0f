"""The trust boundary in one room: checkpoint files and folders read without running code, exports written and
read back, and the registry of classes an export's manifest may name.

Nothing is imported here: the tokenizer and loss modules read weights through :mod:`.files`, and :mod:`.export`
builds those modules, so each caller imports the submodule it needs."""
