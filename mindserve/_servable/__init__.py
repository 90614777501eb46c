"""What a servable is: the registration API that servable_config.py calls (``definition``) and the rules that
find a servable's directory and versions on disk (``directory``). The master uses only ``directory``; the
worker imports the user's servable_config.py, which fills a ``definition.ServableDefinition``."""
