from kd2deploy.cli import app

app(prog_name="kd2deploy")
