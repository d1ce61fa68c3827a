"""The local host (``python -m leads serve``), Azurite and ``make run``: development only, left
out of the deployment package by ``.funcignore``."""
