from vdetect.cli import app

app(prog_name="vdetect")
