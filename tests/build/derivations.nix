# Derivations built both by real Nix (nix-store --realise, sandbox on) and by our
# OCI builder; their outputs and references must be identical.  Bootstrap style:
# a static busybox imported as a store path, called by its path with `sh` first.
# Commands inside the scripts are busybox applets (its shell runs them without PATH).
{ busyboxDir, salt, recursiveHash }:
let
  busybox = builtins.path { path = busyboxDir; name = "busybox"; };
  bb = "${busybox}/bin/busybox";
  mk = name: script: attrs: derivation ({
    inherit name salt;
    system = builtins.currentSystem;
    builder = bb;
    args = [ "sh" "-c" script ];
  } // attrs);
in rec {
  tree = mk "tree" ''
    set -e
    mkdir -p $out/a/b/c $out/empty $out/deep/er/and/deeper
    echo hello > $out/a/file
    printf '\000\001\002binary\377\n' > $out/a/b/bin
    printf '#!/bin/sh\necho hi\n' > $out/a/b/c/script
    chmod +x $out/a/b/c/script
    chmod 555 $out/a/file
    ln -s file $out/a/link
    ln -s a/b $out/dirlink
    ln -s $out/a/file $out/self-absolute
    ln -s ${busybox}/bin/busybox $out/busybox
    ln -s /nonexistent/target $out/dangling
    : > $out/emptyfile
    echo spaces > "$out/name with spaces"
    echo unicode > "$out/unicodé"
    seq 1 20000 > $out/deep/er/and/deeper/big
    echo built tree
  '' { };

  flat = mk "flat" "echo single file > $out" { };

  # stdin is /dev/null, stdout and stderr one pseudoterminal in raw mode (cfmakeraw)
  terminal = mk "terminal" ''
    for fd in 0 1 2; do
      if [ -t $fd ]; then echo "$fd: a terminal"; else echo "$fd: not a terminal"; fi
    done > $out
    stty -a -F /proc/self/fd/2 >> $out
  '' { };

  executable = mk "executable" "printf '#!/bin/sh\\n' > $out; chmod 555 $out" { };

  symlinkOutput = mk "symlink-output" "ln -s ${busybox}/bin $out" { };

  multi = mk "multi" ''
    mkdir -p $out $dev $doc
    echo "see $dev" > $out/ref-dev
    echo "self $out" > $out/ref-self
    echo "dev is $dev" > $dev/ref-self
    echo docs > $doc/readme
  '' { outputs = [ "out" "dev" "doc" ]; };

  # tree and multi.dev are referenced, multi.out and multi.doc are not
  dependent = mk "dependent" ''
    mkdir $out
    echo ${tree}/a/file > $out/uses-tree
    cat ${tree}/a/file > $out/copied
    cat ${multi.dev}/ref-self > $out/copied-dev
    echo ${multi.dev} > $out/uses-dev
    test -e ${multi}/ref-self && echo visible > $out/multi-visible
  '' { inherit (multi) doc; };

  passAsFile = mk "pass-as-file" "cat $fooPath $barPath > $out; echo \"\${foo-unset}\" >> $out" {
    foo = "foo contents\n";
    bar = "bar ${busybox}";
    passAsFile = [ "foo" "bar" "missing" ];
  };

  placeholders = mk "placeholders" ''
    mkdir ${builtins.placeholder "out"}
    echo ${builtins.placeholder "out"} > $out/me
    echo "$mentionsDev" > $dev
  '' { outputs = [ "out" "dev" ]; mentionsDev = "dev is ${builtins.placeholder "dev"}"; };

  structured = mk "structured" ''
    o=${builtins.placeholder "out"}
    mkdir $o
    cp .attrs.json .attrs.sh $o/
    env | grep -v -e NIX_ATTRS -e NIX_BUILD_TOP -e NIX_BUILD_CORES -e SHLVL | sort > $o/env
  '' {
    __structuredAttrs = true;
    list = [ 1 2 "three" true false null 1.5 ];
    simpleList = [ 1 "two" true null ];
    attrs = { a = 1; b = "it's"; c = true; };
    mixed = { a = 1; nested = [ 1 ]; };
    floats = [ 0.1 1.5 1.0e15 1.0e16 123456.0 2.5e-7 1.0e-5 (-0.25) 3.0 ];
    integral = 3.0;
    big = 10000000000;
    neg = -7;
    text = "é\n\t\"\\ and 'quotes' \u0001";
    "weird-key" = 1;
    "1bad" = 2;
    empty = { };
    emptyList = [ ];
  };

  environment = mk "environment" ''
    echo "$HOME $NIX_STORE $NIX_LOG_FD $TERM $PATH $TMPDIR $TMP $TEMP $TEMPDIR $PWD" > $out
    pwd >> $out
    echo "$name $system $salt" >> $out
  '' { };

  fixedFlat = mk "fixed-flat" "printf hello > $out" {
    outputHashMode = "flat";
    outputHashAlgo = "sha256";
    outputHash = builtins.hashString "sha256" "hello";
  };

  fixedRecursive = mk "fixed-recursive" "mkdir $out; echo x > $out/f; ln -s f $out/l" {
    outputHashMode = "recursive";
    outputHash = recursiveHash;
  };
}
