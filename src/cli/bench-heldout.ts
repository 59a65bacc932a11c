// Held-out text for the perplexity column of `moe-serve bench quant`: docstrings of seven modules of the
// CPython 3.11.7 standard library (textwrap, heapq, bisect, fnmatch, shlex, glob, queue: module, class
// and function docstrings longer than 80 characters, in source order, cut at a paragraph near 16 kB),
// extracted with Python's ast.get_docstring. In the embedded model's domain (Python documentation) but not
// its training text (the reStructuredText sources of the documentation and the fortunes files). Python
// Software Foundation License Version 2, as that documentation.
export const HELD_OUT_TEXT: string =
  "# textwrap\n\nText wrapping and filling.\n\nObject for wrapping/filling text.  The public interface cons" +
  "ists of\nthe wrap() and fill() methods; the other methods are just there for\nsubclasses to override i" +
  "n order to tweak the default behaviour.\nIf you want to completely replace the main wrapping algorith" +
  "m,\nyou'll probably have to override _wrap_chunks().\n\nSeveral instance attributes control various asp" +
  "ects of wrapping:\n  width (default: 70)\n    the maximum width of wrapped lines (unless break_long_wo" +
  "rds\n    is false)\n  initial_indent (default: \"\")\n    string that will be prepended to the first line" +
  " of wrapped\n    output.  Counts towards the line's width.\n  subsequent_indent (default: \"\")\n    stri" +
  "ng that will be prepended to all lines save the first\n    of wrapped output; also counts towards eac" +
  "h line's width.\n  expand_tabs (default: true)\n    Expand tabs in input text to spaces before further" +
  " processing.\n    Each tab will become 0 .. 'tabsize' spaces, depending on its position\n    in its li" +
  "ne.  If false, each tab is treated as a single character.\n  tabsize (default: 8)\n    Expand tabs in " +
  "input text to 0 .. 'tabsize' spaces, unless\n    'expand_tabs' is false.\n  replace_whitespace (defaul" +
  "t: true)\n    Replace all whitespace characters in the input text by spaces\n    after tab expansion. " +
  " Note that if expand_tabs is false and\n    replace_whitespace is true, every tab will be converted t" +
  "o a\n    single space!\n  fix_sentence_endings (default: false)\n    Ensure that sentence-ending punctu" +
  "ation is always followed\n    by two spaces.  Off by default because the algorithm is\n    (unavoidabl" +
  "y) imperfect.\n  break_long_words (default: true)\n    Break words longer than 'width'.  If false, tho" +
  "se words will not\n    be broken, and some lines might be longer than 'width'.\n  break_on_hyphens (de" +
  "fault: true)\n    Allow breaking hyphenated words. If true, wrapping will occur\n    preferably on whi" +
  "tespaces and right after hyphens part of\n    compound words.\n  drop_whitespace (default: true)\n    D" +
  "rop leading and trailing whitespace from lines.\n  max_lines (default: None)\n    Truncate wrapped lin" +
  "es.\n  placeholder (default: ' [...]')\n    Append to the last line of truncated text.\n\nWrap a single " +
  "paragraph of text, returning a list of wrapped lines.\n\nReformat the single paragraph in 'text' so it" +
  " fits in lines of no\nmore than 'width' columns, and return a list of wrapped lines.  By\ndefault, tab" +
  "s in 'text' are expanded with string.expandtabs(), and\nall other whitespace characters (including ne" +
  "wline) are converted to\nspace.  See TextWrapper class for available keyword args to customize\nwrappi" +
  "ng behaviour.\n\nFill a single paragraph of text, returning a new string.\n\nReformat the single paragra" +
  "ph in 'text' to fit in lines of no more\nthan 'width' columns, and return a new string containing the" +
  " entire\nwrapped paragraph.  As with wrap(), tabs are expanded and other\nwhitespace characters conver" +
  "ted to space.  See TextWrapper class for\navailable keyword args to customize wrapping behaviour.\n\nCo" +
  "llapse and truncate the given text to fit in the given width.\n\nThe text first has its whitespace col" +
  "lapsed.  If it then fits in\nthe *width*, it is returned as is.  Otherwise, as many words\nas possible" +
  " are joined and then the placeholder is appended::\n\n    >>> textwrap.shorten(\"Hello  world!\", width=" +
  "12)\n    'Hello world!'\n    >>> textwrap.shorten(\"Hello  world!\", width=11)\n    'Hello [...]'\n\nRemove" +
  " any common leading whitespace from every line in `text`.\n\nThis can be used to make triple-quoted st" +
  "rings line up with the left\nedge of the display, while still presenting them in the source code\nin i" +
  "ndented form.\n\nNote that tabs and spaces are both treated as whitespace, but they\nare not equal: the" +
  " lines \"  hello\" and \"\\thello\" are\nconsidered to have no common leading whitespace.\n\nEntirely blank " +
  "lines are normalized to a newline character.\n\nAdds 'prefix' to the beginning of selected lines in 't" +
  "ext'.\n\nIf 'predicate' is provided, 'prefix' will only be added to the lines\nwhere 'predicate(line)' " +
  "is True. If 'predicate' is not provided,\nit will default to adding 'prefix' to all non-empty lines t" +
  "hat do not\nconsist solely of whitespace characters.\n\n_munge_whitespace(text : string) -> string\n\nMun" +
  "ge whitespace in text: expand tabs and convert all other\nwhitespace characters to spaces.  Eg. \" foo" +
  "\\tbar\\n\\nbaz\"\nbecomes \" foo    bar  baz\".\n\n_split(text : string) -> [string]\n\nSplit the text to wrap" +
  " into indivisible chunks.  Chunks are\nnot quite the same as words; see _wrap_chunks() for full\ndetai" +
  "ls.  As an example, the text\n  Look, goof-ball -- use the -b option!\nbreaks into the following chunk" +
  "s:\n  'Look,', ' ', 'goof-', 'ball', ' ', '--', ' ',\n  'use', ' ', 'the', ' ', '-b', ' ', 'option!'\ni" +
  "f break_on_hyphens is True, or in:\n  'Look,', ' ', 'goof-ball', ' ', '--', ' ',\n  'use', ' ', 'the'," +
  " ' ', '-b', ' ', option!'\notherwise.\n\n_fix_sentence_endings(chunks : [string])\n\nCorrect for sentence" +
  " endings buried in 'chunks'.  Eg. when the\noriginal text contains \"... foo.\\nBar ...\", munge_whitesp" +
  "ace()\nand split() will convert that to [..., \"foo.\", \" \", \"Bar\", ...]\nwhich has one too few spaces; " +
  "this method simply changes the one\nspace to two.\n\n_handle_long_word(chunks : [string],\n             " +
  "        cur_line : [string],\n                     cur_len : int, width : int)\n\nHandle a chunk of tex" +
  "t (most likely a word, not whitespace) that\nis too long to fit in any line.\n\n_wrap_chunks(chunks : [" +
  "string]) -> [string]\n\nWrap a sequence of text chunks and return a list of lines of\nlength 'self.widt" +
  "h' or less.  (If 'break_long_words' is false,\nsome lines may be longer than this.)  Chunks correspon" +
  "d roughly\nto words and the whitespace between them: each chunk is\nindivisible (modulo 'break_long_wo" +
  "rds'), but a line break can\ncome between any two chunks.  Chunks should not have internal\nwhitespace" +
  "; ie. a chunk is either all whitespace or a \"word\".\nWhitespace chunks will be removed from the begin" +
  "ning and end of\nlines, but apart from that whitespace is preserved.\n\nwrap(text : string) -> [string]" +
  "\n\nReformat the single paragraph in 'text' so it fits in lines of\nno more than 'self.width' columns, " +
  "and return a list of wrapped\nlines.  Tabs in 'text' are expanded with string.expandtabs(),\nand all o" +
  "ther whitespace characters (including newline) are\nconverted to space.\n\nfill(text : string) -> strin" +
  "g\n\nReformat the single paragraph in 'text' to fit in lines of no\nmore than 'self.width' columns, and" +
  " return a new string\ncontaining the entire wrapped paragraph.\n\n# heapq\n\nHeap queue algorithm (a.k.a." +
  " priority queue).\n\nHeaps are arrays for which a[k] <= a[2*k+1] and a[k] <= a[2*k+2] for\nall k, count" +
  "ing elements from 0.  For the sake of comparison,\nnon-existing elements are considered to be infinit" +
  "e.  The interesting\nproperty of a heap is that a[0] is always its smallest element.\n\nUsage:\n\nheap = " +
  "[]            # creates an empty heap\nheappush(heap, item) # pushes a new item on the heap\nitem = he" +
  "appop(heap) # pops the smallest item from the heap\nitem = heap[0]       # smallest item on the heap " +
  "without popping it\nheapify(x)           # transforms list into a heap, in-place, in linear time\nitem" +
  " = heappushpop(heap, item) # pushes a new item and then returns\n                               # the" +
  " smallest item; the heap size is unchanged\nitem = heapreplace(heap, item) # pops and returns smalles" +
  "t item, and adds\n                               # new item; the heap size is unchanged\n\nOur API diff" +
  "ers from textbook heap algorithms as follows:\n\n- We use 0-based indexing.  This makes the relationsh" +
  "ip between the\n  index for a node and the indexes for its children slightly less\n  obvious, but is m" +
  "ore suitable since Python uses 0-based indexing.\n\n- Our heappop() method returns the smallest item, " +
  "not the largest.\n\nThese two make it possible to view the heap as a regular Python list\nwithout surpr" +
  "ises: heap[0] is the smallest item, and heap.sort()\nmaintains the heap invariant!\n\nPop and return th" +
  "e current smallest value, and add the new item.\n\nThis is more efficient than heappop() followed by h" +
  "eappush(), and can be\nmore appropriate when using a fixed-size heap.  Note that the value\nreturned m" +
  "ay be larger than item!  That constrains reasonable uses of\nthis routine unless written as part of a" +
  " conditional replacement:\n\n    if item > heap[0]:\n        item = heapreplace(heap, item)\n\nMerge mult" +
  "iple sorted inputs into a single sorted output.\n\nSimilar to sorted(itertools.chain(*iterables)) but " +
  "returns a generator,\ndoes not pull the data into memory all at once, and assumes that each of\nthe in" +
  "put streams is already sorted (smallest to largest).\n\n>>> list(merge([1,3,5,7], [0,2,4,8], [5,10,15," +
  "20], [], [25]))\n[0, 1, 2, 3, 4, 5, 5, 7, 8, 10, 15, 20, 25]\n\nIf *key* is not None, applies a key fun" +
  "ction to each element to determine\nits sort order.\n\n>>> list(merge(['dog', 'horse'], ['cat', 'fish'," +
  " 'kangaroo'], key=len))\n['dog', 'cat', 'fish', 'horse', 'kangaroo']\n\nFind the n smallest elements in" +
  " a dataset.\n\nEquivalent to:  sorted(iterable, key=key)[:n]\n\nFind the n largest elements in a dataset" +
  ".\n\nEquivalent to:  sorted(iterable, key=key, reverse=True)[:n]\n\n# bisect\n\nBisection algorithms.\n\nIns" +
  "ert item x in list a, and keep it sorted assuming a is sorted.\n\nIf x is already in a, insert it to t" +
  "he right of the rightmost x.\n\nOptional args lo (default 0) and hi (default len(a)) bound the\nslice o" +
  "f a to be searched.\n\nReturn the index where to insert item x in list a, assuming a is sorted.\n\nThe r" +
  "eturn value i is such that all e in a[:i] have e <= x, and all e in\na[i:] have e > x.  So if x alrea" +
  "dy appears in the list, a.insert(i, x) will\ninsert just after the rightmost x already there.\n\nOption" +
  "al args lo (default 0) and hi (default len(a)) bound the\nslice of a to be searched.\n\nInsert item x i" +
  "n list a, and keep it sorted assuming a is sorted.\n\nIf x is already in a, insert it to the left of t" +
  "he leftmost x.\n\nOptional args lo (default 0) and hi (default len(a)) bound the\nslice of a to be sear" +
  "ched.\n\nReturn the index where to insert item x in list a, assuming a is sorted.\n\nThe return value i " +
  "is such that all e in a[:i] have e < x, and all e in\na[i:] have e >= x.  So if x already appears in " +
  "the list, a.insert(i, x) will\ninsert just before the leftmost x already there.\n\nOptional args lo (de" +
  "fault 0) and hi (default len(a)) bound the\nslice of a to be searched.\n\n# fnmatch\n\nFilename matching " +
  "with shell patterns.\n\nfnmatch(FILENAME, PATTERN) matches according to the local convention.\nfnmatchc" +
  "ase(FILENAME, PATTERN) always takes case in account.\n\nThe functions operate by translating the patte" +
  "rn into a regular\nexpression.  They cache the compiled regular expressions for speed.\n\nThe function " +
  "translate(PATTERN) returns a regular expression\ncorresponding to PATTERN.  (It does not compile it.)" +
  "\n\nTest whether FILENAME matches PATTERN.\n\nPatterns are Unix shell style:\n\n*       matches everything" +
  "\n?       matches any single character\n[seq]   matches any character in seq\n[!seq]  matches any char " +
  "not in seq\n\nAn initial period in FILENAME is not special.\nBoth FILENAME and PATTERN are first case-n" +
  "ormalized\nif the operating system requires it.\nIf you don't want this, use fnmatchcase(FILENAME, PAT" +
  "TERN).\n\nTest whether FILENAME matches PATTERN, including case.\n\nThis is a version of fnmatch() which" +
  " doesn't case-normalize\nits arguments.\n\nTranslate a shell PATTERN to a regular expression.\n\nThere is" +
  " no way to quote meta-characters.\n\n# shlex\n\nA lexical analyzer class for simple shell-like syntaxes." +
  "\n\n# glob\n\nFilename globbing utility.\n\nReturn a list of paths matching a pathname pattern.\n\nThe patte" +
  "rn may contain simple shell-style wildcards a la\nfnmatch. Unlike fnmatch, filenames starting with a\n" +
  "dot are special cases that are not matched by '*' and '?'\npatterns by default.\n\nIf `include_hidden` " +
  "is true, the patterns '*', '?', '**'  will match hidden\ndirectories.\n\nIf `recursive` is true, the pa" +
  "ttern '**' will match any files and\nzero or more directories and subdirectories.\n\nReturn an iterator" +
  " which yields the paths matching a pathname pattern.\n\nThe pattern may contain simple shell-style wil" +
  "dcards a la\nfnmatch. However, unlike fnmatch, filenames starting with a\ndot are special cases that a" +
  "re not matched by '*' and '?'\npatterns.\n\nIf recursive is true, the pattern '**' will match any files" +
  " and\nzero or more directories and subdirectories.\n\n# queue\n\nA multi-producer, multi-consumer queue.\n" +
  "\nCreate a queue object with a given maximum size.\n\nIf maxsize is <= 0, the queue size is infinite.\n\n" +
  "Variant of Queue that retrieves open entries in priority order (lowest first).\n\nEntries are typicall" +
  "y tuples of the form:  (priority number, data).\n\nIndicate that a formerly enqueued task is complete." +
  "\n\nUsed by Queue consumer threads.  For each get() used to fetch a task,\na subsequent call to task_do" +
  "ne() tells the queue that the processing\non the task is complete.\n\nIf a join() is currently blocking" +
  ", it will resume when all items\nhave been processed (meaning that a task_done() call was received\nfo" +
  "r every item that had been put() into the queue).\n\nRaises a ValueError if called more times than the" +
  "re were items\nplaced in the queue.\n\nBlocks until all items in the Queue have been gotten and process" +
  "ed.\n\nThe count of unfinished tasks goes up whenever an item is added to the\nqueue. The count goes do" +
  "wn whenever a consumer thread calls task_done()\nto indicate the item was retrieved and all work on i" +
  "t is complete.\n\nWhen the count of unfinished tasks drops to zero, join() unblocks.\n\nReturn True if t" +
  "he queue is empty, False otherwise (not reliable!).\n\nThis method is likely to be removed at some poi" +
  "nt.  Use qsize() == 0\nas a direct substitute, but be aware that either approach risks a race\nconditi" +
  "on where a queue can grow before the result of empty() or\nqsize() can be used.\n\nTo create code that " +
  "needs to wait for all queued tasks to be\ncompleted, the preferred technique is to use the join() met" +
  "hod.\n\nReturn True if the queue is full, False otherwise (not reliable!).\n\nThis method is likely to b" +
  "e removed at some point.  Use qsize() >= n\nas a direct substitute, but be aware that either approach" +
  " risks a race\ncondition where a queue can shrink before the result of full() or\nqsize() can be used." +
  "\n\nPut an item into the queue.\n\nIf optional args 'block' is true and 'timeout' is None (the default)," +
  "\nblock if necessary until a free slot is available. If 'timeout' is\na non-negative number, it blocks" +
  " at most 'timeout' seconds and raises\nthe Full exception if no free slot was available within that t" +
  "ime.\nOtherwise ('block' is false), put an item on the queue if a free slot\nis immediately available," +
  " else raise the Full exception ('timeout'\nis ignored in that case).\n\nRemove and return an item from " +
  "the queue.\n\nIf optional args 'block' is true and 'timeout' is None (the default),\nblock if necessary" +
  " until an item is available. If 'timeout' is\na non-negative number, it blocks at most 'timeout' seco" +
  "nds and raises\nthe Empty exception if no item was available within that time.\nOtherwise ('block' is " +
  "false), return an item if one is immediately\navailable, else raise the Empty exception ('timeout' is" +
  " ignored\nin that case).\n\nPut an item into the queue without blocking.\n\nOnly enqueue the item if a fr" +
  "ee slot is immediately available.\nOtherwise raise the Full exception.\n\nRemove and return an item fro" +
  "m the queue without blocking.\n\nOnly get an item if one is immediately available. Otherwise\nraise the" +
  " Empty exception.\n\nPut the item on the queue.\n\nThe optional 'block' and 'timeout' arguments are igno" +
  "red, as this method\nnever blocks.  They are provided for compatibility with the Queue class.\n\nRemove" +
  " and return an item from the queue.\n\nIf optional args 'block' is true and 'timeout' is None (the def" +
  "ault),\nblock if necessary until an item is available. If 'timeout' is\na non-negative number, it bloc" +
  "ks at most 'timeout' seconds and raises\nthe Empty exception if no item was available within that tim" +
  "e.\nOtherwise ('block' is false), return an item if one is immediately\navailable, else raise the Empt" +
  "y exception ('timeout' is ignored\nin that case).\n\nPut an item into the queue without blocking.";
