; Middles for Rust. Each capture name is a span kind (see fimtune/corpus/spans.py);
; captures whose name starts with "_" are helpers and never become middles.
; Every syntax kind exists in Rust; conditions have no parentheses; call_args covers macro arguments too.
; "statements" (2-4 consecutive sibling @statement nodes), "empty" (also after a @statement) and the line kinds
; are made by spans.py; kinds not captured here simply have no candidates in this language.

; statement: one statement or item inside a block, impl / trait / mod body, or file;
; and the tail expression of a block (through the hidden _expression supertype: an alternation of
; expression kinds under (block ...) makes the whole query five times slower).
[
  (expression_statement) (let_declaration) (function_item) (struct_item) (enum_item) (union_item)
  (impl_item) (trait_item) (mod_item) (use_declaration) (const_item) (static_item) (type_item)
  (macro_definition) (extern_crate_declaration) (function_signature_item)
] @statement
(block (_expression) @statement .)

; block: what is between the braces of a fn, if, loop, match, impl / trait / mod, struct or enum
; (spans.py trims it to whole lines).
(block) @block
(declaration_list) @block
(match_block) @block
(field_declaration_list) @block
(enum_variant_list) @block

; call_args: inside the parentheses of a call, or the delimiters of a macro call.
(call_expression arguments: (arguments) @call_args)
(macro_invocation (token_tree) @call_args)

; condition: the test of if / while (a `let` pattern included).
(if_expression condition: (_) @condition)
(while_expression condition: (_) @condition)
(match_arm (match_pattern condition: (_) @condition))

; assignment_rhs: a `let` value, an assignment's right-hand side, a const / static value.
(let_declaration value: (_) @assignment_rhs)
(assignment_expression right: (_) @assignment_rhs)
(compound_assignment_expr right: (_) @assignment_rhs)
(const_item value: (_) @assignment_rhs)
(static_item value: (_) @assignment_rhs)
