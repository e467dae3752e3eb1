"""``mlp``: the platform's command line (launcher today; the full client arrives with the closed loop)."""

from __future__ import annotations

import typer

from mlp_cli.audit import audit_app
from mlp_cli.launcher import Launcher, Platform, state_dir_from_env

app = typer.Typer(help="MLP platform command line.", no_args_is_help=True, add_completion=False)
app.add_typer(audit_app, name="audit")


@app.command()
def up() -> None:
    """Start the local platform (broker, Redis, issuer, services, gateway) and wait until ready."""
    launcher = Launcher()
    launcher.up()
    launcher.print_status()


@app.command()
def down() -> None:
    """Stop exactly the processes ``mlp up`` started."""
    stopped = Launcher().down()
    typer.echo(f"stopped {len(stopped)} process(es)")


@app.command()
def status() -> None:
    """Show each component's pid, address and readiness; exit 1 if any is not ready."""
    if not Launcher().print_status():
        raise typer.Exit(1)


@app.command()
def demo() -> None:
    """Start the platform if needed and run the scenario through the gateway."""
    from mlp_cli.demo import run_smoke
    from mlp_cli.scenario import Scenario

    launcher = Launcher()
    platform = launcher.up()
    if not run_smoke(launcher.state_dir, platform.issuer):
        raise typer.Exit(1)
    if not Scenario(launcher.state_dir, platform.issuer).run():
        raise typer.Exit(1)
    typer.echo("demo: all stages passed")


@app.command()
def token(client_id: str = typer.Argument("mlp-demo"), scope: str = typer.Option(None)) -> None:
    """Print an access token for a dev-issuer client (for curl and tritonclient)."""
    from mlp_cli.demo import client_secret, fetch_token

    state = state_dir_from_env()
    platform = Platform.load(state)
    typer.echo(fetch_token(platform.issuer, client_id, client_secret(state, client_id), scope))


def main() -> None:
    """Console entry point."""
    app()


if __name__ == "__main__":
    main()
