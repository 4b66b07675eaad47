//! Names for the holders the scan at Python's finalisation recorded: a Python name as it is
//! (`app._RESULTS`), a root word as the static it lies in (`static buffers in leaky.so`) or as
//! the kind of memory it is in (a thread's stack, an anonymous mapping).
//!
//! Must never read a file but through the [`Symbolizer`] (the modules the trace names).

use libleak_format::Holder;

use super::Symbolizer;
use crate::replay::{find_module, Trace};

/// How a report names `holder`.
pub fn holder_name(trace: &Trace, holder: &Holder, symbolizer: &mut Symbolizer) -> String {
    match holder {
        Holder::Python(name) => name.clone(),
        Holder::Register => "a register of a blocked thread".to_string(),
        Holder::RootWord(address) => match find_module(&trace.modules, *address) {
            Some(index) => {
                let module = &trace.modules[index].module;
                let file = module.path.rsplit('/').next().unwrap_or(&module.path);
                match symbolizer.data_symbol(module, *address) {
                    Some(symbol) => format!("static {symbol} in {file}"),
                    None => format!("static data of {file} (+{:#x})", address.wrapping_sub(module.bias)),
                }
            }
            None => "a thread's stack or an anonymous mapping".to_string(),
        },
    }
}
