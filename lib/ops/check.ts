/**
 * Argument checks shared by the ops: every shape or dtype mismatch is raised before anything is dispatched,
 * naming the op, the argument and both shapes.
 */
import { ShapeError } from "../gpu/errors.ts";
import { type DType, shapeString, type Tensor } from "../tensor.ts";

/** Throws unless `t` has exactly `shape` (`-1` matches any size). */
export function expectShape(op: string, name: string, t: Tensor, shape: readonly number[]): void {
  const ok = t.shape.length === shape.length && shape.every((d, i) => d < 0 || t.shape[i] === d);
  if (!ok) {
    throw new ShapeError(
      `${op}: ${name} (${t.label}) has shape ${shapeString(t.shape)}, expected ${
        shapeString(shape.map((d) => d < 0 ? "*" as unknown as number : d))
      }`,
    );
  }
}

/** Throws unless `t` holds one of `dtypes`. */
export function expectDtype(op: string, name: string, t: Tensor, ...dtypes: DType[]): void {
  if (!dtypes.includes(t.dtype)) {
    throw new ShapeError(`${op}: ${name} (${t.label}) is ${t.dtype}, expected ${dtypes.join(" or ")}`);
  }
}

/** Throws unless `a` and `b` have the same shape. */
export function expectSameShape(op: string, nameA: string, a: Tensor, nameB: string, b: Tensor): void {
  if (a.shape.length !== b.shape.length || a.shape.some((d, i) => d !== b.shape[i])) {
    throw new ShapeError(
      `${op}: ${nameA} ${shapeString(a.shape)} and ${nameB} ${shapeString(b.shape)} must have the same shape`,
    );
  }
}

/** Rows and columns of a tensor viewed as [rows, last dim]; a shape error for scalars or empty rows. */
export function rowsAndCols(op: string, name: string, t: Tensor): [number, number] {
  const cols = t.shape[t.shape.length - 1];
  if (t.shape.length === 0 || cols === 0) {
    throw new ShapeError(
      `${op}: ${name} (${t.label}) has shape ${shapeString(t.shape)}, expected [..., n > 0]`,
    );
  }
  return [t.size / cols, cols];
}

/** Throws unless `a` and `b` occupy disjoint bytes (a kernel cannot read one binding while writing another). */
export function expectDisjoint(op: string, nameA: string, a: Tensor, nameB: string, b: Tensor): void {
  if (a.buffer !== b.buffer) return;
  const overlap = a.byteOffset < b.byteOffset + b.byteLength && b.byteOffset < a.byteOffset + a.byteLength;
  if (overlap) {
    throw new ShapeError(`${op}: ${nameA} (${a.label}) and ${nameB} (${b.label}) must not share memory`);
  }
}
