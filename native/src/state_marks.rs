//! The marking pass of a snapshot's packed form (`state_codec._marked`), compiled for the
//! trees streams hold: a copy of the state tree with its arrays and long float lists
//! replaced by their markers, those appended in order to a list whose bytes make the
//! packed data. In Python it was ~80% of packing a default-config stream's state
//! (~250 us of ~300), and packing is most of writing a stream's snapshot record.
//!
//! Only the usual trees are marked here: exact dicts with string keys, exact lists and
//! tuples, exact NumPy arrays of numbers, and str, int, float, bool and None leaves, every
//! float finite; and parts packed before (`state_codec.PackedPart`: an adapter's config,
//! packed once when first written), whose text and arrays are taken as they are. For
//! anything else (a subclass, a NumPy scalar, a non-finite float, a key
//! or array the packed form refuses) the pass gives up and the caller runs the Python
//! pass from the start, which is the reference: its result, or its error, stands.

use std::cell::RefCell;

use numpy::{PyArrayDescr, PyArrayDescrMethods, PyUntypedArray, PyUntypedArrayMethods};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple, PyType};

const PACKED_TAG: &str = "__nd__";
const FLOATS_TAG: &str = "__f8__";
/// Float lists at least this long are packed (`state_codec._FLOATS_MIN`).
const FLOATS_MIN: usize = 4;

/// What a value is, as the marking pass tells values apart (exact types only).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Float,
    /// str, int, bool or None: written as it is.
    OtherPlain,
    Dict,
    List,
    Tuple,
    Array,
    /// A `state_codec.PackedPart`: its text and arrays, packed before.
    Part,
    /// Anything else: the Python pass decides.
    Unusual,
}

fn kind_of(value: &Bound<'_, PyAny>, part: &Bound<'_, PyType>) -> Kind {
    if value.is_exact_instance_of::<PyFloat>() {
        Kind::Float
    } else if value.is_exact_instance_of::<PyInt>()
        || value.is_exact_instance_of::<PyString>()
        || value.is_exact_instance_of::<PyBool>()
        || value.is_none()
    {
        Kind::OtherPlain
    } else if value.is_exact_instance_of::<PyDict>() {
        Kind::Dict
    } else if value.is_exact_instance_of::<PyList>() {
        Kind::List
    } else if value.is_exact_instance_of::<PyTuple>() {
        Kind::Tuple
    } else if value.is_exact_instance_of::<PyUntypedArray>() {
        Kind::Array
    } else if value.get_type().is(part) {
        Kind::Part
    } else {
        Kind::Unusual
    }
}

/// A finite float (`x - x` is 0.0 only for those, as the Python pass tests it).
fn finite(value: &Bound<'_, PyAny>) -> bool {
    // (an exact float: the downcast cannot fail)
    value
        .downcast::<PyFloat>()
        .map(|float| float.value().is_finite())
        .unwrap_or(false)
}

/// Gave up: the Python pass marks this tree (see the module docs).
struct Unusual;

type Marked = Result<PyObject, Unusual>;

/// Turns a Python error met on the way (rare: an attribute that could not be read) into a
/// give-up, so the Python pass meets it again and reports it its own way.
fn or_unusual<T>(result: PyResult<T>) -> Result<T, Unusual> {
    result.map_err(|_| Unusual)
}

/// Containers nested deeper than this are left to the Python pass (whose recursion limit
/// answers for them), so a pathological tree cannot exhaust this thread's stack.
const DEPTH_MAX: usize = 200;

/// What the pass reads besides the tree: the list the arrays go to, and the type of the
/// parts packed before.
struct Marking<'a, 'py> {
    arrays: &'a Bound<'py, PyList>,
    part: &'a Bound<'py, PyType>,
    /// The dtype strings met so far, by dtype (a stream's ~70 arrays have three or four
    /// dtypes; reading `dtype.str` made a new string each time: ~a third of an array's
    /// marker). The dtypes are held, so an address stays theirs for the whole pass.
    codes: RefCell<Vec<(Bound<'py, PyAny>, Bound<'py, PyAny>)>>,
}

fn mark<'py>(tree: &Bound<'py, PyAny>, to: &Marking<'_, 'py>, depth: usize) -> Marked {
    if depth > DEPTH_MAX {
        return Err(Unusual);
    }
    match kind_of(tree, to.part) {
        Kind::Dict => mark_dict(tree.downcast::<PyDict>().map_err(|_| Unusual)?, to, depth),
        Kind::List | Kind::Tuple => mark_sequence(tree, to, depth),
        Kind::Array => mark_array(tree, to),
        Kind::Part => take_part(tree, to.arrays),
        Kind::Float if !finite(tree) => Err(Unusual),
        Kind::Float | Kind::OtherPlain => Ok(tree.clone().unbind()),
        Kind::Unusual => Err(Unusual),
    }
}

fn mark_dict<'py>(tree: &Bound<'py, PyDict>, to: &Marking<'_, 'py>, depth: usize) -> Marked {
    let py = tree.py();
    let marked = PyDict::new(py);
    for (index, (key, value)) in tree.iter().enumerate() {
        if !key.is_exact_instance_of::<PyString>() {
            return Err(Unusual);
        }
        if index == 0 && tree.len() == 1 {
            let key = key.downcast::<PyString>().map_err(|_| Unusual)?;
            let name = or_unusual(key.to_str())?;
            if name == PACKED_TAG || name == FLOATS_TAG {
                return Err(Unusual); // refused by the Python pass, with its message
            }
        }
        let entry = match kind_of(&value, to.part) {
            Kind::Float if !finite(&value) => return Err(Unusual),
            Kind::Float | Kind::OtherPlain => value.unbind(),
            _ => mark(&value, to, depth + 1)?,
        };
        or_unusual(marked.set_item(key, entry))?;
    }
    Ok(marked.into_any().unbind())
}

/// The items of an exact list or tuple.
fn items<'py>(tree: &Bound<'py, PyAny>) -> Vec<Bound<'py, PyAny>> {
    match tree.downcast::<PyList>() {
        Ok(list) => list.iter().collect(),
        Err(_) => tree
            .downcast::<PyTuple>()
            .map(|tuple| tuple.iter().collect())
            .unwrap_or_default(),
    }
}

/// Every item a float (finite or not), and whether every float among plain items is
/// finite: what the list branch of the Python pass asks of a list of plain values.
fn plain_floats(values: &[Bound<'_, PyAny>], kinds: &[Kind]) -> (bool, bool) {
    let all_floats = kinds.iter().all(|kind| *kind == Kind::Float);
    let all_finite = values
        .iter()
        .zip(kinds)
        .all(|(value, kind)| *kind != Kind::Float || finite(value));
    (all_floats, all_finite)
}

fn is_plain(kind: Kind) -> bool {
    kind == Kind::Float || kind == Kind::OtherPlain
}

fn mark_sequence<'py>(tree: &Bound<'py, PyAny>, to: &Marking<'_, 'py>, depth: usize) -> Marked {
    let py = tree.py();
    let values = items(tree);
    let kinds: Vec<Kind> = values.iter().map(|value| kind_of(value, to.part)).collect();
    if kinds.contains(&Kind::Unusual) {
        return Err(Unusual); // a NumPy scalar among them, or something stranger
    }
    if kinds.iter().all(|kind| is_plain(*kind)) {
        let (all_floats, all_finite) = plain_floats(&values, &kinds);
        if values.len() >= FLOATS_MIN && all_floats {
            return pack_floats(&values, to.arrays);
        }
        if !all_finite {
            return Err(Unusual);
        }
        return Ok(tree.clone().unbind()); // as it is (a tuple stays a tuple)
    }
    if !values.is_empty() && kinds.iter().all(|kind| *kind == Kind::List) {
        return mark_rows(tree, &values, to, depth);
    }
    let mut marked = Vec::with_capacity(values.len());
    for (value, kind) in values.iter().zip(&kinds) {
        marked.push(match kind {
            Kind::Float if !finite(value) => return Err(Unusual),
            Kind::Float | Kind::OtherPlain => value.clone().unbind(),
            _ => mark(value, to, depth + 1)?,
        });
    }
    Ok(PyList::new(py, marked)
        .map_err(|_| Unusual)?
        .into_any()
        .unbind())
}

/// A list of lists (a ring of rows): kept as it is when every row is short and plain,
/// otherwise row by row (plain rows that are short or not all floats kept as they are).
fn mark_rows<'py>(
    tree: &Bound<'py, PyAny>,
    rows: &[Bound<'py, PyAny>],
    to: &Marking<'_, 'py>,
    depth: usize,
) -> Marked {
    let py = tree.py();
    let row_items: Vec<Vec<Bound<'_, PyAny>>> = rows.iter().map(items).collect();
    let row_kinds: Vec<Vec<Kind>> = row_items
        .iter()
        .map(|row| row.iter().map(|value| kind_of(value, to.part)).collect())
        .collect();
    let longest = row_items.iter().map(Vec::len).max().unwrap_or(0);
    if longest < FLOATS_MIN && row_kinds.iter().flatten().all(|kind| is_plain(*kind)) {
        let all_finite = row_items
            .iter()
            .zip(&row_kinds)
            .all(|(row, kinds)| plain_floats(row, kinds).1);
        return if all_finite {
            Ok(tree.clone().unbind())
        } else {
            Err(Unusual)
        };
    }
    let mut marked = Vec::with_capacity(rows.len());
    for ((row, values), kinds) in rows.iter().zip(&row_items).zip(&row_kinds) {
        let plain = kinds.iter().all(|kind| is_plain(*kind));
        let (all_floats, all_finite) = plain_floats(values, kinds);
        if plain && (values.len() < FLOATS_MIN || !all_floats) {
            if !all_finite {
                return Err(Unusual);
            }
            marked.push(row.clone().unbind());
        } else {
            marked.push(mark(row, to, depth + 1)?);
        }
    }
    Ok(PyList::new(py, marked)
        .map_err(|_| Unusual)?
        .into_any()
        .unbind())
}

/// A list of at least `FLOATS_MIN` floats: a little-endian float64 array appended to
/// `arrays`, and its marker `{"__f8__": length}`.
fn pack_floats(values: &[Bound<'_, PyAny>], arrays: &Bound<'_, PyList>) -> Marked {
    if cfg!(target_endian = "big") {
        return Err(Unusual); // the packed form's floats are little-endian: Python's way
    }
    let py = arrays.py();
    let floats: Vec<f64> = values
        .iter()
        .map(|value| value.downcast::<PyFloat>().map(|float| float.value()))
        .collect::<Result<_, _>>()
        .map_err(|_| Unusual)?;
    or_unusual(arrays.append(crate::arrays::vector(py, &floats)))?;
    let marker = PyDict::new(py);
    or_unusual(marker.set_item(intern!(py, FLOATS_TAG), floats.len()))?;
    Ok(marker.into_any().unbind())
}

/// An array of numbers: appended to `arrays`; its marker `{"__nd__": [dtype, shape]}`.
fn mark_array<'py>(tree: &Bound<'py, PyAny>, to: &Marking<'_, 'py>) -> Marked {
    let py = tree.py();
    let array = tree.downcast::<PyUntypedArray>().map_err(|_| Unusual)?;
    let dtype = array.dtype().into_any();
    let known = to
        .codes
        .borrow()
        .iter()
        .find(|(seen, _)| seen.is(&dtype))
        .map(|(_, code)| code.clone());
    let code = match known {
        Some(code) => code,
        None => {
            let descr = dtype.downcast::<PyArrayDescr>().map_err(|_| Unusual)?;
            if descr.has_object() || descr.has_fields() {
                return Err(Unusual); // refused by the Python pass, with its message
            }
            let code = or_unusual(dtype.getattr(intern!(py, "str")))?;
            to.codes.borrow_mut().push((dtype, code.clone()));
            code
        }
    };
    let shape = PyList::new(py, array.shape()).map_err(|_| Unusual)?;
    or_unusual(to.arrays.append(tree))?;
    let spec = PyList::new(py, [code, shape.into_any()]).map_err(|_| Unusual)?;
    let marker = PyDict::new(py);
    or_unusual(marker.set_item(intern!(py, PACKED_TAG), spec))?;
    Ok(marker.into_any().unbind())
}

/// A part packed before (`state_codec.PackedPart`): its arrays appended to `arrays`, its
/// text (an `orjson.Fragment`, written as it is) in its place.
fn take_part(part: &Bound<'_, PyAny>, arrays: &Bound<'_, PyList>) -> Marked {
    let py = part.py();
    let its_arrays = or_unusual(part.getattr(intern!(py, "arrays")))?;
    let its_arrays = its_arrays.downcast::<PyTuple>().map_err(|_| Unusual)?;
    for array in its_arrays.iter() {
        or_unusual(arrays.append(array))?;
    }
    Ok(or_unusual(part.getattr(intern!(py, "text")))?.unbind())
}

/// `state_codec._marked(tree, arrays)` for the usual trees (see the module docs), or
/// `unusual` when this pass gave up; arrays it appended before giving up are the
/// caller's to remove. Instances of `part` (`state_codec.PackedPart`) are taken as
/// packed before.
#[pyfunction]
fn mark_packed(
    tree: &Bound<'_, PyAny>,
    arrays: &Bound<'_, PyList>,
    unusual: PyObject,
    part: &Bound<'_, PyType>,
) -> PyObject {
    let marking = Marking {
        arrays,
        part,
        codes: RefCell::new(Vec::new()),
    };
    mark(tree, &marking, 0).unwrap_or(unusual)
}

pub fn register(module: &Bound<'_, PyModule>) -> PyResult<()> {
    module.add_function(wrap_pyfunction!(mark_packed, module)?)
}
