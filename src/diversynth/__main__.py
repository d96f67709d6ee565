from diversynth.commands.cli import app

app(prog_name="diversynth")
