/**
 * The processes of a data-parallel run: its rank, its size and the collective operations the trainer needs
 * (an in-place sum across ranks, an abort that stops every rank). One process is {@link SINGLE_PROCESS};
 * under `mpirun` (Open MPI) it is {@link MpiWorld}, reached through FFI on libmpi, so that a plain run needs
 * no MPI library at all.
 */
/** The ranks of a run and their collectives. */
export interface World {
  /** This process's rank, 0..size−1; rank 0 writes the run's files. */
  readonly rank: number;
  /** Number of ranks. */
  readonly size: number;
  /** Rank among the processes of this host (chooses the adapter on a multi-GPU host). */
  readonly localRank: number;
  /** Replaces `values` by their element-wise sum over every rank (every rank passes the same length). */
  sum(values: Float32Array | Float64Array): void;
  /** Stops every rank of the run with exit code `code` (after this rank printed why). */
  abort(code: number): never;
  /** Ends the run's use of MPI (nothing for one process). */
  finalize(): void;
}

/** A run of one process: sums are the identity. */
export const SINGLE_PROCESS: World = {
  rank: 0,
  size: 1,
  localRank: 0,
  sum: () => {},
  abort: (code) => Deno.exit(code),
  finalize: () => {},
};

/** An MPI run that cannot start (no libmpi, another MPI than Open MPI, an MPI call failing). */
export class DistError extends Error {
  /** Error name shown in messages. */
  override name = "DistError";
}

/**
 * Handles of Open MPI's Fortran interface, converted to C handles with the `MPI_*_f2c` functions (stable
 * across Open MPI versions, unlike the C handles, which are addresses of library globals): MPI_COMM_WORLD,
 * MPI_REAL (f32), MPI_DOUBLE_PRECISION (f64) and MPI_SUM, as numbered by Open MPI's `mpif-handles.h`.
 */
const FORTRAN = { commWorld: 0, real: 13, doublePrecision: 17, sum: 3 } as const;

/** Elements per MPI_Allreduce call: its count is a C int. */
const MAX_COUNT = 2 ** 30;

const SYMBOLS = {
  MPI_Init: { parameters: ["pointer", "pointer"], result: "i32" },
  MPI_Finalize: { parameters: [], result: "i32" },
  MPI_Comm_f2c: { parameters: ["i32"], result: "pointer" },
  MPI_Type_f2c: { parameters: ["i32"], result: "pointer" },
  MPI_Op_f2c: { parameters: ["i32"], result: "pointer" },
  MPI_Comm_rank: { parameters: ["pointer", "buffer"], result: "i32" },
  MPI_Comm_size: { parameters: ["pointer", "buffer"], result: "i32" },
  MPI_Allreduce: { parameters: ["buffer", "buffer", "i32", "pointer", "pointer", "pointer"], result: "i32" },
  MPI_Abort: { parameters: ["pointer", "i32"], result: "i32" },
} as const;

/** libmpi's file names, Open MPI's first. */
const LIBRARIES = ["libmpi.so.40", "libmpi.so", "libmpi.dylib"];

/** The ranks of an `mpirun` (Open MPI) job, through FFI on libmpi. */
export class MpiWorld implements World {
  #finalized = false;

  private constructor(
    private lib: Deno.DynamicLibrary<typeof SYMBOLS>,
    private comm: Deno.PointerValue,
    readonly rank: number,
    readonly size: number,
    readonly localRank: number,
  ) {}

  /** Initialises MPI (MPI_Init) and reads this process's rank and the world size. */
  static open(env: Record<string, string | undefined>): MpiWorld {
    let lib: Deno.DynamicLibrary<typeof SYMBOLS> | null = null;
    const errors: string[] = [];
    for (const name of LIBRARIES) {
      try {
        lib = Deno.dlopen(name, SYMBOLS);
        break;
      } catch (e) {
        errors.push(`${name}: ${(e as Error).message.split("\n")[0]}`);
      }
    }
    if (!lib) {
      throw new DistError(
        `running under mpirun (OMPI_COMM_WORLD_SIZE=${env.OMPI_COMM_WORLD_SIZE}) but libmpi could not be ` +
          `loaded (${errors.join("; ")}); install Open MPI (Debian: openmpi-bin)`,
      );
    }
    // Open MPI busy-polls inside blocking calls by default, taking the cores a CPU adapter's (lavapipe's) or
    // a driver's threads need; yielding when idle costs microseconds per all-reduce. Read by MPI_Init.
    if (Deno.env.get("OMPI_MCA_mpi_yield_when_idle") === undefined) {
      Deno.env.set("OMPI_MCA_mpi_yield_when_idle", "1");
    }
    const s = lib.symbols;
    check(s.MPI_Init(null, null), "MPI_Init");
    const comm = s.MPI_Comm_f2c(FORTRAN.commWorld);
    const rank = new Int32Array(1), size = new Int32Array(1);
    check(s.MPI_Comm_rank(comm, rank), "MPI_Comm_rank");
    check(s.MPI_Comm_size(comm, size), "MPI_Comm_size");
    return new MpiWorld(lib, comm, rank[0], size[0], Number(env.OMPI_COMM_WORLD_LOCAL_RANK ?? 0));
  }

  /** MPI_Allreduce(MPI_SUM) in place, in pieces of at most 2³⁰ elements. */
  sum(values: Float32Array | Float64Array): void {
    const s = this.lib.symbols;
    const type = s.MPI_Type_f2c(values instanceof Float32Array ? FORTRAN.real : FORTRAN.doublePrecision);
    const op = s.MPI_Op_f2c(FORTRAN.sum);
    for (let i = 0; i < values.length; i += MAX_COUNT) {
      const part = values.subarray(i, Math.min(values.length, i + MAX_COUNT));
      const out = part.slice();
      check(s.MPI_Allreduce(part, out, part.length, type, op, this.comm), "MPI_Allreduce");
      part.set(out);
    }
  }

  /** MPI_Abort: mpirun stops every rank. */
  abort(code: number): never {
    this.lib.symbols.MPI_Abort(this.comm, code);
    Deno.exit(code); // not reached: MPI_Abort ends the process
  }

  /** MPI_Finalize (once). */
  finalize(): void {
    if (this.#finalized) return;
    this.#finalized = true;
    this.lib.symbols.MPI_Finalize();
    this.lib.close();
  }
}

function check(code: number, call: string): void {
  if (code !== 0) throw new DistError(`${call} failed with MPI error code ${code}`);
}

/**
 * The world of this process: {@link MpiWorld} when Open MPI's `mpirun` started it with more than one rank
 * (its OMPI_COMM_WORLD_SIZE), else {@link SINGLE_PROCESS} (no MPI library is loaded). Another MPI's launcher
 * (PMI_SIZE without Open MPI's variables) is refused by name, since the handles used are Open MPI's.
 */
export function worldFromEnv(env: Record<string, string | undefined> = Deno.env.toObject()): World {
  const size = Number(env.OMPI_COMM_WORLD_SIZE ?? 1);
  if (!(Number.isInteger(size) && size >= 1)) {
    throw new DistError(`OMPI_COMM_WORLD_SIZE=${env.OMPI_COMM_WORLD_SIZE} is not a rank count`);
  }
  if (size === 1) {
    if (Number(env.PMI_SIZE ?? 1) > 1) {
      throw new DistError(
        `PMI_SIZE=${env.PMI_SIZE}: this launcher is not Open MPI's mpirun, the only MPI Eaglet supports`,
      );
    }
    return SINGLE_PROCESS;
  }
  return MpiWorld.open(env);
}
