"""Executes a notebook headless with a Jupyter kernel and writes it with its outputs.

    python3 execute_notebook.py <notebook.ipynb> <executed.ipynb> <working dir> [kernel name]

Like nbclient, it runs the code cells in order, one kernel, and stops at the first error; unlike nbclient it
keeps collecting a cell's outputs until its execute_reply and idle status have arrived and the kernel has then
been quiet for a second. Deno's kernel publishes some outputs (console output, even execute_result) after
the idle status, and nbclient, which stops at idle, drops them at random.
Needs jupyter_client and nbformat (Debian: python3-jupyter-client python3-nbformat).
"""

import queue
import sys
import time

import nbformat
from jupyter_client.manager import start_new_kernel

QUIET_SECONDS = 1.0
CELL_TIMEOUT_SECONDS = 600


def run_cell(kc, source):
    msg_id = kc.execute(source, allow_stdin=False)
    outputs, reply, idle, quiet = [], None, False, 0.0
    deadline = time.monotonic() + CELL_TIMEOUT_SECONDS
    while quiet < QUIET_SECONDS:
        if time.monotonic() > deadline:
            raise TimeoutError(f"cell ran over {CELL_TIMEOUT_SECONDS} s:\n{source}")
        if reply is None:
            try:
                msg = kc.get_shell_msg(timeout=0)
                if msg["parent_header"].get("msg_id") == msg_id:
                    reply = msg
            except queue.Empty:
                pass
        try:
            msg = kc.get_iopub_msg(timeout=0.1)
        except queue.Empty:
            if reply is not None and idle:
                quiet += 0.1
            continue
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        quiet = 0.0
        kind = msg["msg_type"]
        if kind == "status":
            idle = msg["content"]["execution_state"] == "idle"
        elif kind in ("stream", "display_data", "execute_result", "error"):
            outputs.append(nbformat.v4.output_from_msg(msg))
    return outputs, reply["content"]


def main():
    src, dst, cwd = sys.argv[1:4]
    kernel = sys.argv[4] if len(sys.argv) > 4 else "deno"
    nb = nbformat.read(src, as_version=4)
    km, kc = start_new_kernel(kernel_name=kernel, startup_timeout=120, cwd=cwd)
    failed = None
    try:
        for cell in nb.cells:
            if cell.cell_type != "code":
                continue
            cell.outputs, reply = run_cell(kc, cell.source)
            cell.execution_count = reply.get("execution_count")
            if reply["status"] != "ok":
                failed = f"{reply.get('ename')}: {reply.get('evalue')} in the cell\n{cell.source}"
                break
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
    nbformat.write(nb, dst)
    if failed:
        sys.exit(failed)


if __name__ == "__main__":
    main()
