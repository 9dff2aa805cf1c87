# Developer commands. CI (.ci/run) runs `quality` and the README's test command.
.PHONY: style quality test test-all

style:  # rewrite: format and apply ruff's safe fixes
	ruff format .
	ruff check --fix .

quality:  # check only: the rule set and formatting of pyproject.toml's [tool.ruff]
	ruff check .
	ruff format --check .

test:  # what CI runs (slow tests excluded, see pyproject.toml)
	python -m pytest

test-all:  # also the slow ones
	python -m pytest -m ""
