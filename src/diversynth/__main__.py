from diversynth.cli import app

app(prog_name="diversynth")
