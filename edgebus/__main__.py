from edgebus.cli import app

app()
