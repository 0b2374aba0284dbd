; Definitions and imports of Rust, for the cross-file context index (fimtune/context.py).
; Captures: @definition.<kind> (the whole definition), @name, @body (elided in the stub), @doc (docstring kept),
; @import (a `use` path as written, brace lists expanded later; or a whole `mod x;` item, a module file).
; When several patterns capture the same @name node they are merged: the largest node, the first pattern's kind.

(function_item name: (identifier) @name body: (_) @body) @definition.function
(function_signature_item name: (identifier) @name) @definition.function

(struct_item name: (type_identifier) @name) @definition.class
(enum_item name: (type_identifier) @name body: (_) @body) @definition.class
(union_item name: (type_identifier) @name) @definition.class
(trait_item name: (type_identifier) @name body: (_) @body) @definition.interface
(impl_item type: [(type_identifier) @name (generic_type type: (type_identifier) @name)] body: (_) @body) @definition.impl
(type_item name: (type_identifier) @name) @definition.type
(macro_definition name: (identifier) @name) @definition.macro

(use_declaration argument: [(scoped_identifier) (identifier) (scoped_use_list) (use_wildcard) (use_list)] @import)
(use_declaration argument: (use_as_clause path: (_) @import))
(mod_item !body) @import
